//! fio's nbd engine: many requests in flight from several connections.
//! Speed is not asserted here (see ../shared/bench); only that every request
//! completes, and that what was written verifies.

mod common;

use std::process::Command;

use common::{Server, have, run_ok};

fn fio(uri: &str, args: &[&str]) -> String {
    let mut c = Command::new("fio");
    c.args([
        "--name=t",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        "--output-format=json",
    ]);
    c.args(args);
    run_ok(&mut c, 120)
}

/// Sum of `"error" : N` fields in fio's JSON output.
fn errors(json: &str) -> u64 {
    assert!(
        json.contains("\"error\" : "),
        "no error field in fio's output: {json}"
    );
    json.match_indices("\"error\" : ")
        .map(|(i, m)| {
            let rest = &json[i + m.len()..];
            rest[..rest.find([',', '\n']).unwrap_or(rest.len())]
                .trim()
                .parse::<u64>()
                .unwrap_or(u64::MAX)
        })
        .sum()
}

#[test]
fn random_reads_four_jobs_iodepth_16() {
    if !have(&["fio"]) {
        return;
    }
    let srv = Server::start(&["memory", "1G"]);
    let fill = fio(
        &srv.uri(),
        &["--rw=write", "--bs=1m", "--iodepth=8", "--size=64m"],
    );
    assert_eq!(errors(&fill), 0, "{fill}");
    let out = fio(
        &srv.uri(),
        &[
            "--rw=randread",
            "--bs=4k",
            "--numjobs=4",
            "--iodepth=16",
            "--size=64m",
            "--time_based=1",
            "--runtime=2",
            "--group_reporting=1",
        ],
    );
    assert_eq!(errors(&out), 0, "{out}");
    assert!(out.contains("\"total_ios\""), "{out}");
}

#[test]
fn random_writes_verify() {
    if !have(&["fio"]) {
        return;
    }
    let srv = Server::start(&["memory", "256M"]);
    let out = fio(
        &srv.uri(),
        &[
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=8",
            "--size=16m",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_state_save=0",
        ],
    );
    assert_eq!(errors(&out), 0, "{out}");
}
