//! A real browser for page tests: headless Chromium driven by chromedriver over the W3C
//! WebDriver protocol (JSON over HTTP on loopback), the few commands the tests need.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use super::{free_port, has_program, require};

pub struct Browser {
    driver: Child,
    base: String,
    client: reqwest::Client,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session; `None` only when the skip of
    /// `chromium` was asked for (see `require`).
    pub async fn start() -> Option<Self> {
        let present =
            has_program("chromedriver", "--version") && has_program("chromium", "--version");
        if !require(
            "chromium",
            present,
            "apt-get install chromium chromium-driver",
        ) {
            return None;
        }
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let root = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(format!("{root}/status")).send().await
                && let Ok(v) = serde_json::from_str::<Value>(&r.text().await.unwrap_or_default())
                && v["value"]["ready"] == true
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                // Root in CI: Chromium's sandbox needs a user namespace it may not get.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--hide-scrollbars",
                         "--window-size=1280,800"],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let r = answer(
            client
                .post(format!("{root}/session"))
                .header("content-type", "application/json")
                .body(caps.to_string()),
        )
        .await;
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {r}"))
            .to_owned();
        Some(Self {
            driver,
            base: format!("{root}/session/{session}"),
            client,
        })
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let r = answer(req).await;
        if r["value"].get("error").is_some() {
            panic!("webdriver {path}: {}", r["value"]);
        }
        r["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    /// Runs `script` (a function body; `return` gives its value) in the page.
    pub async fn run(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Sets the viewport to `width` × `height` CSS pixels (the window's inner size).
    pub async fn viewport(&self, width: u32, height: u32) {
        // The window's outer size includes nothing in headless mode.
        self.call(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        let b64 = self.call(reqwest::Method::GET, "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("base64"))
            .expect("png")
    }

    /// The console's errors since the last call (level SEVERE).
    pub async fn console_errors(&self) -> Vec<Value> {
        self.console()
            .await
            .into_iter()
            .filter(|e| e["level"] == "SEVERE")
            .collect()
    }

    /// The browser console's entries since the last call (chromedriver's log endpoint).
    pub async fn console(&self) -> Vec<Value> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/se/log",
                Some(json!({"type": "browser"})),
            )
            .await;
        v.as_array().cloned().unwrap_or_default()
    }
}

/// A WebDriver answer's JSON.
async fn answer(req: reqwest::RequestBuilder) -> Value {
    let text = req
        .send()
        .await
        .expect("webdriver")
        .text()
        .await
        .expect("webdriver answer");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("webdriver answered {text:?}: {e}"))
}

impl Browser {
    /// Ends the session (Chromium exits), then the driver.
    pub async fn quit(self) {
        let _ = self.client.delete(&self.base).send().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The session ends with its driver, which takes its Chromium down with it.
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
