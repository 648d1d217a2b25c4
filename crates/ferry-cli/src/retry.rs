//! The exact `ferry get --resume` command that takes a failed or interrupted download up
//! again with the same options, quoted for a POSIX shell.

use crate::args::GetArgs;
use ferry::ticket::Ticket;

/// The `ferry get --resume` command line that takes `t` up again with the same options.
pub fn resume_command(args: &GetArgs, t: &Ticket) -> String {
    let program = std::env::args().next().unwrap_or_else(|| "ferry".into());
    let mut cmd = vec![program, "get".into(), "--resume".into()];
    cmd.extend(["-o".into(), args.output.display().to_string()]);
    if let Some(n) = &args.name {
        cmd.extend(["--name".into(), n.clone()]);
    }
    for (flag, path) in [
        ("--tls-cert", &args.tls.tls_cert),
        ("--tls-key", &args.tls.tls_key),
        ("--tls-ca", &args.tls.tls_ca),
    ] {
        if let Some(p) = path {
            cmd.extend([flag.into(), p.display().to_string()]);
        }
    }
    if args.request_timeout != std::time::Duration::from_secs(60) {
        cmd.extend([
            "--request-timeout".into(),
            format!("{}s", args.request_timeout.as_secs_f64()),
        ]);
    }
    if args.sync_every != ferry::objects::DEFAULT_SYNC_EVERY {
        cmd.extend(["--sync-every".into(), args.sync_every.to_string()]);
    }
    cmd.push(t.to_string());
    cmd.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `s` as one POSIX shell word.
fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_only_when_needed() {
        assert_eq!(shell_quote("get"), "get");
        assert_eq!(shell_quote("/tmp/out-1"), "/tmp/out-1");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(
            shell_quote("ferry+tcp://h:1/s/R?kind=file&name=a"),
            "'ferry+tcp://h:1/s/R?kind=file&name=a'"
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
