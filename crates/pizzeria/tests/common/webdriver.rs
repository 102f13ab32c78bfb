//! A small W3C WebDriver client over Debian's `chromedriver` and headless Chromium, for the
//! tests that click through a page: open a URL, find elements by CSS or XPath (waiting for
//! them), read text, type, click, accept a `confirm()` and take a screenshot.
//!
//! Every request has a timeout and every wait a deadline, so a page that never shows what a
//! test waits for fails the test with the page's text instead of hanging it. The driver
//! process is killed when the [`Browser`] is dropped (a failing test included).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

/// The key under which WebDriver returns an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Debian's chromedriver, if installed.
pub(crate) fn chromedriver() -> Option<&'static str> {
    ["/usr/bin/chromedriver"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

/// Whether chromedriver and Chromium are there; if not, says so (and fails under
/// TABGRAB_REQUIRE_SERVICES).
pub(crate) fn require() -> bool {
    if chromedriver().is_some() && super::browser::chromium().is_some() {
        return true;
    }
    assert!(
        std::env::var_os("TABGRAB_REQUIRE_SERVICES").is_none(),
        "chromium and chromedriver are required (TABGRAB_REQUIRE_SERVICES is set): \
         apt-get install -y chromium chromium-driver"
    );
    println!("skipped the browser test: chromium or chromedriver is absent");
    false
}

/// A headless Chromium driven through chromedriver.
pub(crate) struct Browser {
    driver: Child,
    http: reqwest::Client,
    /// `http://127.0.0.1:<port>/session/<id>`.
    session: String,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    /// Kills chromedriver's whole process group: Chromium with it, which would otherwise
    /// outlive a failed test (a session ended by [`Browser::close`] has quit it already).
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A found element.
#[derive(Clone, Debug)]
pub(crate) struct Element(String);

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a session with a fresh profile.
    pub(crate) async fn start() -> Browser {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        // A process group of its own, which Chromium joins: killed whole on drop.
        let driver = Command::new(chromedriver().unwrap())
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let profile = tempfile::tempdir().unwrap();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let mut browser = Browser {
            driver,
            http,
            session: String::new(),
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = browser.http.get(format!("{base}/status")).send().await;
            if let Ok(r) = ready
                && let Ok(v) = r.json::<Value>().await
                && v["value"]["ready"] == json!(true)
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": {
                "binary": super::browser::chromium().unwrap(),
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1400,900",
                    format!("--user-data-dir={}", browser._profile.path().display()),
                ],
            },
        }}});
        let created = browser
            .call(
                reqwest::Method::POST,
                &format!("{base}/session"),
                Some(capabilities),
            )
            .await
            .unwrap_or_else(|e| panic!("no WebDriver session: {e}"));
        let id = created["sessionId"].as_str().unwrap().to_owned();
        browser.session = format!("{base}/session/{id}");
        browser
    }

    /// One WebDriver command; its `value`, or the driver's error.
    async fn call(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let mut request = self.http.request(method, url);
        // POST commands take a JSON body, an empty object when they have no parameter.
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        let v: Value = response.json().await.map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(v["value"].clone())
        } else {
            Err(format!("{status}: {}", v["value"]))
        }
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.session);
        self.call(method, &url, body)
            .await
            .unwrap_or_else(|e| panic!("WebDriver {path}: {e}"))
    }

    /// Opens `url` and waits for it to load.
    pub(crate) async fn open(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    /// The page's visible text.
    pub(crate) async fn text_of_page(&self) -> String {
        match self.find_now("css selector", "body").await {
            Some(body) => self.text(&body).await,
            None => String::new(),
        }
    }

    async fn find_now(&self, using: &str, value: &str) -> Option<Element> {
        let url = format!("{}/element", self.session);
        let found = self
            .call(
                reqwest::Method::POST,
                &url,
                Some(json!({ "using": using, "value": value })),
            )
            .await
            .ok()?;
        Some(Element(found[ELEMENT].as_str()?.to_owned()))
    }

    /// The first element that `selector` (CSS) finds, waiting up to `within` for one.
    pub(crate) async fn css(&self, selector: &str, within: Duration) -> Element {
        self.find("css selector", selector, within).await
    }

    /// The first element that `path` (XPath) finds, waiting up to `within` for one.
    pub(crate) async fn xpath(&self, path: &str, within: Duration) -> Element {
        self.find("xpath", path, within).await
    }

    async fn find(&self, using: &str, value: &str, within: Duration) -> Element {
        let deadline = Instant::now() + within;
        loop {
            if let Some(found) = self.find_now(using, value).await {
                return found;
            }
            if Instant::now() > deadline {
                panic!(
                    "no element {value:?} within {within:?}; the page says:\n{}",
                    self.text_of_page().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether `path` (XPath) finds an element now.
    pub(crate) async fn has_xpath(&self, path: &str) -> bool {
        self.find_now("xpath", path).await.is_some()
    }

    /// The element's visible text.
    pub(crate) async fn text(&self, element: &Element) -> String {
        let v = self
            .command(
                reqwest::Method::GET,
                &format!("/element/{}/text", element.0),
                None,
            )
            .await;
        v.as_str().unwrap_or_default().to_owned()
    }

    /// Clicks the element.
    pub(crate) async fn click(&self, element: &Element) {
        self.command(
            reqwest::Method::POST,
            &format!("/element/{}/click", element.0),
            Some(json!({})),
        )
        .await;
    }

    /// Types `text` into the element.
    pub(crate) async fn type_into(&self, element: &Element, text: &str) {
        self.command(
            reqwest::Method::POST,
            &format!("/element/{}/value", element.0),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Waits for a `confirm()` dialog, returns its text and accepts it.
    pub(crate) async fn accept_dialog(&self, within: Duration) -> String {
        let deadline = Instant::now() + within;
        let url = format!("{}/alert/text", self.session);
        let text = loop {
            if let Ok(text) = self.call(reqwest::Method::GET, &url, None).await {
                break text.as_str().unwrap_or_default().to_owned();
            }
            assert!(Instant::now() < deadline, "no dialog within {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        self.command(reqwest::Method::POST, "/alert/accept", Some(json!({})))
            .await;
        text
    }

    /// The current URL.
    pub(crate) async fn url(&self) -> String {
        let v = self.command(reqwest::Method::GET, "/url", None).await;
        v.as_str().unwrap_or_default().to_owned()
    }

    /// A PNG of the viewport, written to `png`; checked to be a PNG of some size.
    pub(crate) async fn screenshot(&self, png: &Path) -> Vec<u8> {
        let v = self
            .command(reqwest::Method::GET, "/screenshot", None)
            .await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "no PNG screenshot");
        assert!(bytes.len() > 10_000, "the screenshot is nearly empty");
        std::fs::write(png, &bytes).unwrap();
        bytes
    }

    /// Ends the session (the driver is killed on drop).
    pub(crate) async fn close(self) {
        let _ = self
            .call(reqwest::Method::DELETE, &self.session, None)
            .await;
    }
}
