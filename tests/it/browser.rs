//! descent.html in a real browser: headless Chromium, driven through chromedriver's
//! WebDriver HTTP interface (plain JSON over a local socket), loads the page, moves the
//! batch-size slider and clicks Refresh; each must redraw the jittery path, and the page
//! must log no errors.
//!
//! Needs Debian's `chromium` and `chromium-driver`; `.ci/run` installs them and sets
//! MINIBATCH_REQUIRE_BROWSER=1, which turns their absence into a failure. Elsewhere the test
//! says it was skipped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::temp_dir;

struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    fn start() -> Option<Driver> {
        let port = TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let driver = Driver { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if driver
                .request("GET", "/status", None)
                .is_ok_and(|s| s["value"]["ready"] == true)
            {
                return Some(driver);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("chromedriver did not become ready on port {port}");
    }

    /// One HTTP/1.1 request; the JSON body of the reply, read by its Content-Length
    /// (chromedriver keeps connections open whatever the request asks).
    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> std::io::Result<Value> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let body = body.map(Value::to_string).unwrap_or_default();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let mut bytes = Vec::new();
        let mut buf = [0u8; 8192];
        let header_end = loop {
            let n = read_some(&mut stream, &mut buf)?;
            if n == 0 {
                return Err(std::io::Error::other(
                    "connection closed before the headers ended",
                ));
            }
            bytes.extend_from_slice(&buf[..n]);
            if let Some(i) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let headers = String::from_utf8_lossy(&bytes[..header_end]).to_ascii_lowercase();
        let length: usize = headers
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| std::io::Error::other("no content-length"))?;
        while bytes.len() < header_end + length {
            let n = read_some(&mut stream, &mut buf)?;
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&buf[..n]);
        }
        serde_json::from_slice(&bytes[header_end..]).map_err(std::io::Error::other)
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let reply = self
            .request(method, path, Some(&body))
            .expect("webdriver reply");
        assert!(
            reply["value"].get("error").is_none(),
            "{method} {path}: {reply}"
        );
        reply["value"].clone()
    }
}

#[test]
fn slider_and_refresh_redraw_the_jittery_path_without_page_errors() {
    let required = std::env::var("MINIBATCH_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    let have = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !(have("chromium") && have("chromedriver")) {
        assert!(
            !required,
            "chromium and chromedriver are required (apt-get install chromium chromium-driver)"
        );
        eprintln!("skipped: chromium or chromedriver not installed");
        return;
    }
    let dir = temp_dir("browser-descent");
    let out = Command::new(env!("CARGO_BIN_EXE_minibatch"))
        .args([
            "descent",
            "-q",
            "--batch-size",
            "4",
            "--n",
            "64",
            "--steps",
            "40",
            "--out",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = format!("file://{}", dir.join("descent.html").display());

    let driver = Driver::start().expect("chromedriver starts");
    let profile = dir.join("chrome-profile");
    let session = driver.call(
        "POST",
        "/session",
        json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     format!("--user-data-dir={}", profile.display())]
        }}}}),
    );
    let id = session["sessionId"]
        .as_str()
        .expect("session id")
        .to_string();
    let script = |source: &str| {
        driver.call(
            "POST",
            &format!("/session/{id}/execute/sync"),
            json!({"script": source, "args": []}),
        )
    };
    driver.call(
        "POST",
        &format!("/session/{id}/url"),
        json!({ "url": page }),
    );

    let points = || script("return document.getElementById('jitter').getAttribute('points');");
    let first = points();
    assert!(
        first.as_str().is_some_and(|p| p.split(' ').count() == 41),
        "40 steps drawn: {first}"
    );

    // Move the slider to the largest batch size, as a user's drag would (input event).
    script(
        "var s = document.getElementById('batch'); s.value = s.max; s.dispatchEvent(new Event('input')); return s.value;",
    );
    let after_slider = points();
    assert_ne!(
        first, after_slider,
        "moving the slider did not redraw the path"
    );
    assert_eq!(
        script("return document.getElementById('batch-value').textContent;"),
        "64"
    );

    // Back to a small batch, then Refresh: another seed's path.
    script(
        "var s = document.getElementById('batch'); s.value = 2; s.dispatchEvent(new Event('input')); return 0;",
    );
    let before_refresh = points();
    let button = driver.call(
        "POST",
        &format!("/session/{id}/element"),
        json!({"using": "css selector", "value": "#refresh"}),
    );
    let element = button
        .as_object()
        .and_then(|o| o.values().next())
        .and_then(Value::as_str)
        .expect("element id")
        .to_string();
    driver.call(
        "POST",
        &format!("/session/{id}/element/{element}/click"),
        json!({}),
    );
    let after_refresh = points();
    assert_ne!(
        before_refresh, after_refresh,
        "Refresh did not draw a new path"
    );

    // The legend shows the learning rate as given (an f32 widened to f64 was printed as
    // 0.10000000149011612).
    let legend = script("return document.getElementById('legend').textContent;");
    let legend = legend.as_str().unwrap_or_default().to_string();
    assert!(
        legend.contains(", lr 0.") && !legend.contains("0000"),
        "{legend}"
    );

    let errors = script("return window.__errors;");
    assert_eq!(errors, json!([]), "the page logged errors");
    let _ = driver.request("DELETE", &format!("/session/{id}"), None);
}

/// `stream.read`, retried when a signal interrupts it: the test binary runs other tests'
/// child processes alongside, and a read cut short by a signal is not chromedriver's reply.
fn read_some(stream: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match stream.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            done => return done,
        }
    }
}
