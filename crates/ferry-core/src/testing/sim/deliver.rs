//! What happens when a simulated message or timer arrives: the service answers a request, a
//! receiver's engine takes a reply, a crash, restart, deletion or source-failure notice lands.

use super::events::Event;
use super::link::Paced;
use super::Sim;
use crate::{Handled, RequestId};
use bytes::Bytes;
use std::time::Duration;

impl Sim {
    /// Deliver `ev`, due now.
    pub(super) fn deliver(&mut self, ev: Event) {
        let now = self.now;
        match ev {
            Event::Request {
                from,
                slot,
                life,
                id,
                payload,
            } => {
                let name = self.receivers[from].name.clone();
                match self.service.handle_payload(&name, &payload, now) {
                    Handled::Reply(reply) => {
                        if let Some(id) = id {
                            let body = reply.body.and_then(wire_body);
                            self.transmit(from, true, true, || Event::Reply {
                                to: from,
                                slot,
                                life,
                                id,
                                rc: reply.rc,
                                payload: body.clone(),
                            });
                        }
                    }
                    Handled::Pull(ticket) => {
                        let (lo, hi) = self.cfg.produce_time;
                        let d = Duration::from_nanos(
                            self.rng.range(lo.as_nanos() as u64, hi.as_nanos() as u64),
                        );
                        // A pull always expects a reply.
                        let id = id.unwrap_or(RequestId(u64::MAX));
                        self.schedule(
                            now + d,
                            Event::Produced {
                                ticket,
                                from,
                                slot,
                                life,
                                id,
                            },
                        );
                    }
                }
            }
            Event::Produced {
                ticket,
                from,
                slot,
                life,
                id,
            } => {
                self.stats.produced += 1;
                let produced = ticket.produce();
                let reply = self.service.finish_pull(ticket, produced, now);
                let len = reply
                    .body
                    .as_ref()
                    .and_then(|b| b.data.as_ref())
                    .map_or(0, |d| d.byte_len());
                let body = reply.body.and_then(wire_body);
                if self.cfg.pace.is_some() && len > 0 {
                    self.link.push(
                        from,
                        Paced {
                            slot,
                            life,
                            id,
                            rc: reply.rc,
                            payload: body,
                            len,
                        },
                    );
                    return self.start_link();
                }
                self.transmit(from, true, true, || Event::Reply {
                    to: from,
                    slot,
                    life,
                    id,
                    rc: reply.rc,
                    payload: body.clone(),
                });
            }
            Event::Reply {
                to,
                slot,
                life,
                id,
                rc,
                payload,
            } => {
                let rc_ = &mut self.receivers[to];
                let sl = &mut rc_.slots[slot];
                if rc_.crashed || sl.life != life {
                    self.stats.dropped_by_crash += 1;
                    return;
                }
                if let Some((dl, _)) = sl.live.as_mut() {
                    dl.reply_payload(id, rc, payload.as_ref(), now);
                }
            }
            Event::LinkDone(to, p) => {
                self.link.done();
                self.transmit(to, true, true, || Event::Reply {
                    to,
                    slot: p.slot,
                    life: p.life,
                    id: p.id,
                    rc: p.rc,
                    payload: p.payload.clone(),
                });
                self.start_link();
            }
            Event::Crash(r) => {
                let rc = &mut self.receivers[r];
                rc.crashed = true;
                for s in &mut rc.slots {
                    if s.result.is_none() {
                        s.live = None;
                    }
                }
            }
            Event::Restart(r) => {
                if !self.receivers[r].crashed {
                    return;
                }
                self.receivers[r].crashed = false;
                for s in 0..self.receivers[r].slots.len() {
                    if self.receivers[r].slots[s].result.is_none() {
                        self.launch(r, s);
                    }
                }
            }
            Event::DeleteTx(tx) => {
                let _ = self.service.delete_transaction(&tx, now);
            }
            Event::SourceFailure(r, notice) => {
                let origin = notice
                    .source_fqcn
                    .rsplit_once('.')
                    .map(|(p, _)| p.to_string())
                    .unwrap_or_default();
                let rc = &mut self.receivers[r];
                let Ok(failed) = rc.failures.record_notice(&origin, &notice, now) else {
                    return;
                };
                for f in failed {
                    if f.source != self.cfg.sender {
                        continue;
                    }
                    for s in &mut rc.slots {
                        if s.ref_id == f.ref_id {
                            if let Some((dl, _)) = s.live.as_mut() {
                                dl.source_failed(&f.reason, now);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A reply body as the wire carries it. A file chunk its file no longer holds cannot be sent
/// whole (a real connection is closed mid-reply): the reply arrives without a body, which the
/// receiver refuses as a bad reply.
fn wire_body(b: crate::message::ReplyBody) -> Option<Bytes> {
    b.encode().ok().map(Bytes::from)
}
