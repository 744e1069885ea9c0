//! A real web server for the curl backend's tests: Debian's nginx, run in the
//! foreground as the test's child with a configuration written into a temp
//! directory it owns (pid, logs and sockets there too), on a Unix socket and,
//! when asked, on a TCP port. Dropping it kills and reaps it.
//!
//! nginx cannot listen on port 0, so a TCP port is one the kernel handed out
//! a moment before (bound and released here); if another process takes it in
//! between, nginx fails to bind, and it is started again on another.
#![allow(dead_code)]

use std::fs;
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::TempDir;

pub const NGINX: &str = "/usr/sbin/nginx";

/// The locations every configuration has, besides the files under its root:
/// a redirect loop, a redirect to the image, a copy that ignores `Range`, and
/// a server error.
const LOCATIONS: &str = "
        location = /loop { return 302 /loop; }
        location = /moved { return 301 /disk.img; }
        location = /norange.img { max_ranges 0; alias ROOT/disk.img; }
        location = /broken { return 500; }
";

/// Whether nginx is installed; a loud SKIP (or, under
/// NBDLITE_REQUIRE_INTEROP=1, a failure) if not.
#[track_caller]
pub fn have_nginx() -> bool {
    if Path::new(NGINX).is_file() {
        return true;
    }
    if super::interop_required() {
        panic!("nginx is required (NBDLITE_REQUIRE_INTEROP=1) but {NGINX} is not installed");
    }
    super::skip("nginx is not installed");
    false
}

/// What to serve: `root` holds the files; TLS with this certificate and key.
#[derive(Clone, Default)]
pub struct Site {
    pub root: PathBuf,
    pub tcp: bool,
    pub tls: Option<(PathBuf, PathBuf)>,
}

pub struct Nginx {
    child: Option<Child>,
    pub dir: TempDir,
    site: Site,
    /// The Unix socket it listens on (plain HTTP, or HTTPS with `tls`).
    pub sock: PathBuf,
    pub port: Option<u16>,
}

impl Nginx {
    #[track_caller]
    pub fn start(site: Site) -> Nginx {
        let dir = TempDir::new();
        let sock = dir.join("web.sock");
        let mut n = Nginx {
            child: None,
            dir,
            site,
            sock,
            port: None,
        };
        n.restart();
        n
    }

    /// A URL for `path` through the Unix socket: `URL unix-socket-path=SOCK`.
    pub fn unix_args(&self, path: &str) -> Vec<String> {
        let scheme = if self.site.tls.is_some() {
            "https"
        } else {
            "http"
        };
        vec![
            format!("{scheme}://localhost{path}"),
            format!("unix-socket-path={}", self.sock.display()),
        ]
    }

    pub fn tcp_url(&self, path: &str) -> String {
        let port = self.port.expect("started with tcp");
        format!("http://127.0.0.1:{port}{path}")
    }

    /// Stops it (SIGKILL: as a crash would), leaving the configuration.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = fs::remove_file(&self.sock);
    }

    /// Starts it (again), on the same socket and port when it can.
    #[track_caller]
    pub fn restart(&mut self) {
        self.stop();
        for _ in 0..20 {
            if self.site.tcp && self.port.is_none() {
                self.port = Some(free_port());
            }
            let conf = self.dir.join("nginx.conf");
            fs::write(&conf, self.config()).expect("write nginx.conf");
            let child = Command::new(NGINX)
                .arg("-p")
                .arg(self.dir.path())
                .arg("-e")
                .arg(self.dir.join("error.log"))
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn nginx");
            self.child = Some(child);
            if self.wait_listening() {
                return;
            }
            // Its TCP port was taken in between: another one.
            self.stop();
            self.port = None;
        }
        let log = fs::read_to_string(self.dir.join("error.log")).unwrap_or_default();
        panic!("nginx did not start: {log}");
    }

    /// Until it accepts on its socket (true), or exits (false).
    fn wait_listening(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        let child = self.child.as_mut().expect("just spawned");
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            let unix = UnixStream::connect(&self.sock).is_ok();
            let tcp = self
                .port
                .is_none_or(|p| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok());
            if unix && tcp {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("nginx did not listen within 10 s");
    }

    fn config(&self) -> String {
        let d = self.dir.path().display();
        let root = self.site.root.display().to_string();
        let ssl = if self.site.tls.is_some() { " ssl" } else { "" };
        let mut listen = format!("listen unix:{}{ssl};", self.sock.display());
        if let Some(p) = self.port {
            listen += &format!("\n        listen 127.0.0.1:{p};");
        }
        let certs = match &self.site.tls {
            Some((cert, key)) => format!(
                "ssl_certificate {};\n        ssl_certificate_key {};",
                cert.display(),
                key.display()
            ),
            None => String::new(),
        };
        format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log;\nevents {{ worker_connections 1024; }}\n\
             http {{\n    access_log off;\n    client_body_temp_path {d}/body;\n\
             proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n\
             uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n\
             default_type application/octet-stream;\n    sendfile on;\n\
             server {{\n        {listen}\n        {certs}\n        root {root};\n{}\n    }}\n}}\n",
            LOCATIONS.replace("ROOT", &root)
        )
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP port the kernel had free a moment ago.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr").port()
}
