//! Unit tests of `proconsul lock`: flags, keys, the semaphore's JSON, the child.

use super::*;
use clap::Parser;

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn parse(args: &[&str]) -> Result<LockArgs, clap::Error> {
    let cli = super::super::Cli::try_parse_from(super::super::normalize(go_flag_order(
        super::super::kv::go_flag_order(os(args)),
    )))?;
    match cli.command {
        super::super::Command::Lock(args) => Ok(*args),
        other => panic!("{other:?}"),
    }
}

fn pair(key: &str, session: Option<&str>, value: &str) -> KvPair {
    KvPair {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        flags: SEMAPHORE_FLAG_VALUE,
        session: session.map(str::to_owned),
        lock_index: 0,
        create_index: 5,
        modify_index: 7,
    }
}

#[test]
fn flag_values_are_consuls() {
    assert_eq!(LOCK_FLAG_VALUE, 3_304_740_253_564_472_344);
    assert_eq!(SEMAPHORE_FLAG_VALUE, 16_210_313_421_097_356_768);
}

#[test]
fn flags_end_at_the_prefix_so_the_command_keeps_its_own() {
    assert_eq!(
        go_flag_order(os(&["p", "lock", "-n", "2", "-verbose", "app", "ls", "-l"])),
        os(&["p", "lock", "-n", "2", "-verbose", "--", "app", "ls", "-l"])
    );
    assert_eq!(
        go_flag_order(os(&["p", "lock", "-timeout=1s", "app", "-x"])),
        os(&["p", "lock", "-timeout=1s", "--", "app", "-x"])
    );
    assert_eq!(
        go_flag_order(os(&["p", "kv", "get", "k"])),
        os(&["p", "kv", "get", "k"])
    );
}

#[test]
fn datacenter_takes_a_value_before_the_prefix() {
    let a = parse(&["p", "lock", "-datacenter", "dc2", "app", "true"]).unwrap();
    assert_eq!(a.datacenter.as_deref(), Some("dc2"));
    assert_eq!(a.args, os(&["app", "true"]));
    let a = parse(&["p", "lock", "-datacenter=dc3", "app", "true"]).unwrap();
    assert_eq!(a.datacenter.as_deref(), Some("dc3"));
    assert_eq!(
        parse(&["p", "lock", "app", "true"]).unwrap().datacenter,
        None
    );
}

#[test]
fn defaults_are_consuls() {
    let a = parse(&["p", "lock", "app", "true"]).unwrap();
    assert_eq!(a.limit, 1);
    assert_eq!(a.timeout, go_signed_duration("0").unwrap());
    assert_eq!(a.monitor_retry, 3);
    assert!(a.shell && !a.child_exit_code && !a.verbose && !a.pass_stdin);
    assert_eq!(a.name, "");
    assert_eq!(a.args, os(&["app", "true"]));
}

#[test]
fn every_flag_parses_in_go_s_forms() {
    let a = parse(&[
        "p",
        "lock",
        "-n",
        "3",
        "-timeout",
        "1m30s",
        "-child-exit-code",
        "-shell=false",
        "-name=job",
        "-verbose",
        "-monitor-retry=0",
        "-pass-stdin",
        "-http-addr",
        "127.0.0.1:1",
        "/app",
        "sh",
        "-c",
        "exit 3",
    ])
    .unwrap();
    assert_eq!(a.limit, 3);
    assert_eq!(a.timeout.value, Duration::from_secs(90));
    assert!(a.child_exit_code && !a.shell && a.verbose && a.pass_stdin);
    assert_eq!(a.name, "job");
    assert_eq!(a.monitor_retry, 0);
    assert_eq!(a.client.http_addr, "127.0.0.1:1");
    assert_eq!(a.args, os(&["/app", "sh", "-c", "exit 3"]));
    // `-n=2`, `-try` (Consul's old name of -timeout), negative values for Consul's
    // own refusals.
    let a = parse(&["p", "lock", "-n=2", "-try=5s", "app", "x"]).unwrap();
    assert_eq!((a.limit, a.timeout.value), (2, Duration::from_secs(5)));
    let a = parse(&[
        "p",
        "lock",
        "-n",
        "-1",
        "-timeout=-2s",
        "-monitor-retry",
        "-1",
        "a",
        "x",
    ])
    .unwrap();
    assert_eq!(a.limit, -1);
    assert!(a.timeout.negative);
    assert_eq!(a.monitor_retry, -1);
    assert!(parse(&["p", "lock", "-timeout=soon", "app", "x"]).is_err());
    assert!(parse(&["p", "lock", "-nope", "app", "x"]).is_err());
}

#[test]
fn session_name_and_keys_are_consuls() {
    assert_eq!(
        default_session_name(&os(&["echo", "hi"]), "locks/job"),
        "Consul lock for 'echo hi' at 'locks/job'"
    );
    assert_eq!(go_join("locks/job", LOCK_KEY), "locks/job/.lock");
    assert_eq!(go_join("locks/job/", LOCK_KEY), "locks/job/.lock");
    assert_eq!(go_join("", LOCK_KEY), ".lock");
    assert_eq!(go_join("a//b", "s-1"), "a/b/s-1");
}

#[test]
fn the_semaphore_lock_is_consuls_json() {
    let mut state = SemaphoreLock {
        limit: 2,
        holders: BTreeMap::new(),
    };
    state.holders.insert("b-session".into(), true);
    state.holders.insert("a-session".into(), true);
    assert_eq!(
        String::from_utf8(state.encode()).unwrap(),
        r#"{"Limit":2,"Holders":{"a-session":true,"b-session":true}}"#
    );
    state.holders.clear();
    assert_eq!(
        String::from_utf8(state.encode()).unwrap(),
        r#"{"Limit":2,"Holders":{}}"#
    );
    // Written by Consul; null holders; no key at all; an empty value.
    let read = |v: &str| SemaphoreLock::decode(Some(&pair("p/.lock", None, v)), 9);
    let s = read(r#"{"Limit":3,"Holders":{"x":true}}"#).unwrap();
    assert_eq!((s.limit, s.holders.len()), (3, 1));
    assert!(
        read(r#"{"Limit":3,"Holders":null}"#)
            .unwrap()
            .holders
            .is_empty()
    );
    assert_eq!(SemaphoreLock::decode(None, 4).unwrap().limit, 4);
    assert_eq!(read("").unwrap().limit, 9);
    assert!(
        read("not json")
            .unwrap_err()
            .starts_with("lock decoding failed: ")
    );
}

#[test]
fn holders_without_a_live_contender_key_are_pruned() {
    let mut state: SemaphoreLock =
        serde_json::from_str(r#"{"Limit":2,"Holders":{"live":true,"gone":true}}"#).unwrap();
    let pairs = [
        pair("p/.lock", None, ""),
        pair("p/live", Some("live"), ""),
        pair("p/other", Some("waiting"), ""),
    ];
    state.prune(&pairs);
    assert_eq!(state.holders.keys().collect::<Vec<_>>(), ["live"]);
}

#[test]
fn the_child_runs_through_the_shell_or_as_a_program() {
    let words = os(&["echo", "a b", "$HOME"]);
    let cmd = child_command(&words, true, None);
    let std = cmd.as_std();
    assert_eq!(std.get_program(), "/bin/sh");
    assert_eq!(std.get_args().collect::<Vec<_>>(), ["-c", "echo a b $HOME"]);
    let cmd = child_command(&words, true, Some("/bin/bash".into()));
    assert_eq!(cmd.as_std().get_program(), "/bin/bash");
    let cmd = child_command(&words, false, Some("/bin/bash".into()));
    let std = cmd.as_std();
    assert_eq!(std.get_program(), "echo");
    assert_eq!(std.get_args().collect::<Vec<_>>(), ["a b", "$HOME"]);
}

#[test]
fn exit_statuses_read_as_go_s() {
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(go_exit_text(ExitStatus::from_raw(3 << 8)), "exit status 3");
    assert_eq!(go_exit_text(ExitStatus::from_raw(15)), "signal: terminated");
    assert_eq!(go_exit_text(ExitStatus::from_raw(9)), "signal: killed");
}

#[test]
fn timeouts_shorten_the_waits_and_end_them() {
    // A Shutdown driven by hand rather than by signals.
    let (_tx, rx) = watch::channel(false);
    let shutdown = Shutdown { rx };
    let mut forever = Wait::new(None);
    assert_eq!(forever.next(&shutdown), Some(LOCK_WAIT_TIME));
    assert_eq!(forever.next(&shutdown), Some(LOCK_WAIT_TIME));
    let mut once = Wait::new(Some(Duration::from_millis(1)));
    assert_eq!(once.next(&shutdown), Some(Duration::from_millis(1)));
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(once.next(&shutdown), None);
    let (tx, rx) = watch::channel(false);
    let shutdown = Shutdown { rx };
    tx.send_replace(true);
    assert_eq!(Wait::new(None).next(&shutdown), None);
}

#[test]
fn only_unanswered_or_server_errors_are_retried() {
    assert!(retryable(&ClientError::Transport("refused".into())));
    assert!(retryable(&ClientError::Http {
        status: 500,
        message: "rpc error".into()
    }));
    assert!(!retryable(&ClientError::Http {
        status: 403,
        message: "ACL not found".into()
    }));
    assert!(!retryable(&ClientError::Decode("x".into())));
}
