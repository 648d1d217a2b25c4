//! The notifying side of source failures: a parent cell announcing that a child serving refs
//! died, so the receivers' downloads of those refs fail at once.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_cellnet::RequestOptions;
use ferry_core::message::{SourceFailureNotice, CHANNEL, TOPIC_SOURCE_FAILURE};

use crate::codec;
use crate::error::DownloadError;
use crate::service::DownloadService;

/// How long a source-failure notice may take per target (NVFlare: 3 s per attempt).
const NOTICE_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);

/// Announce to `targets` that `source_fqcn` (a child of this cell) died while serving
/// `ref_ids`: their downloads of those refs fail at once. Returns, per target, `None` on
/// success or the error. NVFlare's rules: up to 4 attempts per target, 3 s each, one 10 s
/// deadline for all, backoff 0.25·2^k s capped at 1 s; only transient codes are retried.
pub async fn notify_source_failure(
    service: &DownloadService,
    targets: &[&str],
    source_fqcn: &str,
    ref_ids: &[&str],
    reason: &str,
) -> Result<BTreeMap<String, Option<String>>, DownloadError> {
    ferry_core::validate_fqcn(source_fqcn)
        .map_err(|e| DownloadError::Local(format!("source_fqcn: {e}")))?;
    let mut rids: Vec<String> = Vec::new();
    for r in ref_ids.iter().filter(|r| !r.is_empty()) {
        if !rids.iter().any(|x| x == r) {
            rids.push(r.to_string());
        }
    }
    if rids.len() > ferry_core::source_failure::MAX_NOTICE_REF_IDS {
        return Err(DownloadError::Local(format!(
            "{} ref ids in one notice (at most {})",
            rids.len(),
            ferry_core::source_failure::MAX_NOTICE_REF_IDS
        )));
    }
    let mut out = BTreeMap::new();
    let mut uniq: Vec<&str> = Vec::new();
    for t in targets {
        if ferry_core::validate_fqcn(t).is_ok() && !uniq.contains(t) {
            uniq.push(t);
        }
    }
    if rids.is_empty() || uniq.is_empty() {
        return Ok(out);
    }
    let notice = SourceFailureNotice {
        source_fqcn: source_fqcn.to_string(),
        ref_ids: rids,
        reason: reason.to_string(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let cell = &service.inner.cell;
    let sends = uniq.iter().map(|target| {
        let notice = &notice;
        async move {
            let mut last = String::from("deadline passed before the first attempt");
            for attempt in 0..4u32 {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                let reply = cell
                    .send_request_with(
                        CHANNEL,
                        TOPIC_SOURCE_FAILURE,
                        target,
                        codec::request(notice),
                        RequestOptions {
                            timeout: left.min(NOTICE_ATTEMPT_TIMEOUT),
                            streamed: false,
                            optional: true,
                        },
                    )
                    .await;
                let rc = codec::from_wire(&reply.return_code());
                if rc == ferry_core::ReturnCode::Ok {
                    return (target.to_string(), None);
                }
                last = format!(
                    "{rc}{}",
                    reply
                        .error_text()
                        .map(|t| format!(": {t}"))
                        .unwrap_or_default()
                );
                if !matches!(
                    rc,
                    ferry_core::ReturnCode::Timeout
                        | ferry_core::ReturnCode::CommError
                        | ferry_core::ReturnCode::ProcessException
                ) {
                    break;
                }
                let backoff =
                    Duration::from_millis(250 * (1 << attempt)).min(Duration::from_secs(1));
                tokio::time::sleep(
                    backoff.min(deadline.saturating_duration_since(tokio::time::Instant::now())),
                )
                .await;
            }
            (target.to_string(), Some(last))
        }
    });
    for (t, r) in futures::future::join_all(sends).await {
        out.insert(t, r);
    }
    Ok(out)
}
