//! SIGHUP is a clean quit, as SIGTERM (and as with nbdkit): its default action
//! would kill the server mid-reply and leave its socket and pidfile behind, so
//! that the next start on the same path fails.

mod common;
#[path = "common/wire.rs"]
mod wire;

use std::process::Command;

use common::{Server, TempDir, wait_exit};
use wire::*;

#[test]
fn sighup_quits_cleanly_and_the_path_can_be_used_again() {
    let dir = TempDir::new();
    let (sock, pidfile) = (dir.join("sock"), dir.join("pid"));
    for round in 0..3 {
        let mut cmd = Command::new(common::bin());
        cmd.arg("-f")
            .arg("-U")
            .arg(&sock)
            .arg("-P")
            .arg(&pidfile)
            .args(["memory", "1M"]);
        let log = dir.join(&format!("log{round}"));
        let mut srv = Server::spawn(cmd, TempDir::new(), sock.clone(), pidfile.clone(), log);
        // A client in the middle of its session: answered, then let go.
        let (mut c, _, _) = Client::ready(&sock, false, false, false);
        assert_eq!(c.write(0, b"before the signal"), 0);
        srv.signal("HUP");
        let st = wait_exit(&mut srv.child, 10).expect("exit after SIGHUP");
        assert!(st.success(), "round {round}: {st}: {}", srv.log_text());
        assert!(c.closed_by_peer(5), "the client was let go");
        assert!(!sock.exists(), "round {round}: the socket was left behind");
        // As nbdkit's, the pidfile stays: scripts read it to see the server gone.
        assert!(pidfile.exists(), "round {round}: the pidfile was removed");
    }
}
