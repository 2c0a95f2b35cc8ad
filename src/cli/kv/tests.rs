//! Unit tests of the `kv` verbs: flags, Go's numbers and base64, the detailed layout,
//! export and import.

use super::*;

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn pair(key: &str, value: &[u8]) -> KvPair {
    KvPair {
        key: key.into(),
        value: value.to_vec(),
        flags: 0,
        session: None,
        lock_index: 0,
        create_index: 12,
        modify_index: 12,
    }
}

#[test]
fn flags_end_at_the_first_argument_as_in_go() {
    assert_eq!(
        go_flag_order(os(&["p", "kv", "put", "-flags", "3", "-cas", "k", "-x"])),
        os(&["p", "kv", "put", "-flags", "3", "-cas", "--", "k", "-x"])
    );
    assert_eq!(
        go_flag_order(os(&["p", "kv", "put", "-flags=3", "k", "-"])),
        os(&["p", "kv", "put", "-flags=3", "--", "k", "-"])
    );
    assert_eq!(
        go_flag_order(os(&["p", "kv", "get", "k", "-detailed"])),
        os(&["p", "kv", "get", "--", "k", "-detailed"])
    );
    assert_eq!(
        go_flag_order(os(&["p", "kv", "import", "-"])),
        os(&["p", "kv", "import", "--", "-"])
    );
    // Two dashes are a flag too; `--` itself is left for clap.
    assert_eq!(
        go_flag_order(os(&["p", "kv", "get", "--http-addr", "h:1", "-recurse"])),
        os(&["p", "kv", "get", "--http-addr", "h:1", "-recurse"])
    );
    assert_eq!(
        go_flag_order(os(&["p", "kv", "get", "--", "-k"])),
        os(&["p", "kv", "get", "--", "-k"])
    );
    // Other verbs are left alone.
    assert_eq!(
        go_flag_order(os(&["p", "members", "x", "-detailed"])),
        os(&["p", "members", "x", "-detailed"])
    );
}

#[test]
fn kv_command_lines_parse_with_go_flags() {
    use clap::Parser;
    let parse = |args: &[&str]| {
        super::super::Cli::try_parse_from(super::super::normalize(go_flag_order(os(args))))
    };
    let cli = parse(&[
        "p",
        "kv",
        "put",
        "-cas",
        "-modify-index=0x10",
        "-flags",
        "42",
        "k",
        "-v",
    ])
    .unwrap();
    let super::super::Command::Kv {
        command: KvCommand::Put(put),
    } = cli.command
    else {
        panic!()
    };
    assert!(put.cas && !put.base64);
    assert_eq!((put.modify_index, put.flags), (16, 42));
    assert_eq!(put.args, os(&["k", "-v"]));
    let cli = parse(&["p", "kv", "get", "-recurse=false", "-keys", "-stale", "a/"]).unwrap();
    let super::super::Command::Kv {
        command: KvCommand::Get(get),
    } = cli.command
    else {
        panic!()
    };
    assert!(!get.recurse && get.keys && get.http.stale);
    assert_eq!(
        (get.separator.as_str(), get.args.as_slice()),
        ("/", &["a/".to_owned()][..])
    );
    assert!(parse(&["p", "kv", "put", "-flags=x", "k"]).is_err());
    assert!(parse(&["p", "kv", "get", "-nope", "k"]).is_err());
}

#[test]
fn go_numbers() {
    assert_eq!(go_uint("42"), Ok(42));
    assert_eq!(go_uint("0"), Ok(0));
    assert_eq!(go_uint("0x1F"), Ok(31));
    assert_eq!(go_uint("010"), Ok(8));
    assert_eq!(go_uint("0b101"), Ok(5));
    for bad in ["", "-1", "+1", "1.5", "abc", "99999999999999999999", "0x"] {
        assert!(go_uint(bad).is_err(), "{bad}");
    }
}

#[test]
fn detailed_matches_consul_layout() {
    let p = pair("app/name", b"proconsul");
    assert_eq!(
        String::from_utf8(detailed(&p, false, false)).unwrap(),
        "CreateIndex      12\nFlags            0\nKey              app/name\n\
         LockIndex        0\nModifyIndex      12\nSession          -\n\
         Value            proconsul"
    );
    assert!(
        String::from_utf8(detailed(&p, true, false))
            .unwrap()
            .ends_with("\nValue            cHJvY29uc3Vs")
    );
    // Keys only: no value, and the block ends with its newline (Consul then adds one).
    assert!(
        String::from_utf8(detailed(&p, false, true))
            .unwrap()
            .ends_with("\nSession          -\n")
    );
    // An empty value leaves "Value" out of the column, so unpadded (Go's tabwriter).
    assert!(
        String::from_utf8(detailed(&pair("k", b""), false, false))
            .unwrap()
            .ends_with("Session          -\nValue")
    );
}

#[test]
fn tabwriter_pads_columns_of_consecutive_lines() {
    assert_eq!(tabwrite(b"a\tb\nlonger\tc\n", 2), b"a       b\nlonger  c\n");
    // A line without a tab ends the block; the next block is sized on its own.
    assert_eq!(
        tabwrite(b"a\t1\nbreak\nlonger\t2", 1),
        b"a 1\nbreak\nlonger 2"
    );
    // Nested columns, characters (not bytes) counted.
    assert_eq!(
        tabwrite("é\tx\ty\nab\tlong\tz".as_bytes(), 1),
        "é  x    y\nab long z".as_bytes()
    );
    // Values spanning lines, and invalid UTF-8 passed through.
    assert_eq!(tabwrite(b"k\tv1\nv2\xff", 1), b"k v1\nv2\xff");
}

#[test]
fn export_is_go_s_tab_indented_json() {
    assert_eq!(export_json(&[]), "[]");
    let mut second = pair("a<b>&\"c\"", &[0, 255]);
    second.flags = 42;
    assert_eq!(
        export_json(&[pair("app/name", b"proconsul"), second]),
        "[\n\t{\n\t\t\"key\": \"app/name\",\n\t\t\"flags\": 0,\n\t\t\"value\": \"cHJvY29uc3Vs\"\n\t},\n\
         \t{\n\t\t\"key\": \"a\\u003cb\\u003e\\u0026\\\"c\\\"\",\n\t\t\"flags\": 42,\n\t\t\"value\": \"AP8=\"\n\t}\n]"
    );
    assert_eq!(go_json_string("\u{1}\n\u{2028}é"), "\"\\u0001\\n\\u2028é\"");
}

#[test]
fn import_reads_entries_as_go_does() {
    let entries = parse_entries(
        r#"[{"key": "a", "flags": 3, "value": "eA=="},
            {"Key": "b/", "VALUE": null, "namespace": "x"}, {}]"#,
    )
    .unwrap();
    assert_eq!(
        entries,
        [
            Entry {
                key: "a".into(),
                flags: 3,
                value: "eA==".into()
            },
            Entry {
                key: "b/".into(),
                ..Entry::default()
            },
            Entry::default(),
        ]
    );
    assert_eq!(parse_entries("null").unwrap(), []);
    assert_eq!(
        parse_entries(r#"{"key": "a"}"#).unwrap_err(),
        "json: cannot unmarshal object into Go value of type []*impexp.Entry"
    );
    assert_eq!(
        parse_entries(r#"[{"flags": -1}]"#).unwrap_err(),
        "json: cannot unmarshal number -1 into Go struct field Entry.flags of type uint64"
    );
    assert_eq!(
        parse_entries(r#"[{"key": 5}]"#).unwrap_err(),
        "json: cannot unmarshal number 5 into Go struct field Entry.key of type string"
    );
    assert!(parse_entries("[{").is_err());
}

#[test]
fn import_keys_are_joined_and_cleaned_as_go_s_path_join() {
    assert_eq!(import_key("", "app/name"), "app/name");
    assert_eq!(import_key("", "a//b/./c"), "a/b/c");
    assert_eq!(import_key("", "app/"), "app/");
    assert_eq!(import_key("copy", "app/name"), "copy/app/name");
    assert_eq!(import_key("copy/", "/app/"), "copy/app/");
    assert_eq!(import_key("copy", "../x"), "x");
    assert_eq!(import_key("", ""), "");
    assert_eq!(import_key("p", ""), "p");
    assert_eq!(go_clean("/a/../../b"), "/b");
    assert_eq!(go_clean("../a"), "../a");
    assert_eq!(go_clean("a/.."), ".");
}

#[test]
fn base64_is_go_s_std_encoding() {
    assert_eq!(go_base64(b"cHJvY29uc3Vs").unwrap(), b"proconsul");
    assert_eq!(go_base64(b"cHJv\nY29u\r\nc3Vs\n").unwrap(), b"proconsul");
    assert_eq!(go_base64(b"").unwrap(), b"");
    assert_eq!(go_base64(b"AP8=").unwrap(), [0, 255]);
    assert_eq!(
        go_base64(b"ab\n!d").unwrap_err(),
        "illegal base64 data at input byte 3"
    );
    assert!(go_base64(b"YWI").is_err(), "padding is required");
}

#[test]
fn io_errors_read_as_go_s() {
    let e = std::io::Error::from_raw_os_error(2);
    assert_eq!(go_io_text(&e), "no such file or directory");
    let missing = read_file(std::ffi::OsStr::new("/nonexistent/x.json")).unwrap_err();
    assert_eq!(
        missing,
        "Failed to read file: open /nonexistent/x.json: no such file or directory"
    );
    assert_eq!(
        read_file(std::ffi::OsStr::new("/")).unwrap_err(),
        "Failed to read file: read /: is a directory"
    );
    assert_eq!(load_data(b"-x").unwrap(), b"-x");
    assert_eq!(load_data(b"plain").unwrap(), b"plain");
}
