//! Where a trusted webview may go (seed 002): within the app's origin only. `http`/`https`
//! links open in the system browser; `file:`, `javascript:`, `data:` and every other scheme
//! are refused, and so is `window.open`.

use crate::app_protocol::ORIGIN;

#[derive(Debug, PartialEq, Eq)]
pub enum Navigation {
    /// A page of the app.
    Allow,
    /// Not here: in the person's browser.
    OpenInBrowser(String),
    Refuse,
}

pub fn decide(url: &str) -> Navigation {
    let Ok(parsed) = url::Url::parse(url) else {
        return Navigation::Refuse;
    };
    match parsed.scheme() {
        "capbridge-ui"
            if parsed.host_str() == Some("app")
                && parsed.port().is_none()
                && parsed.username().is_empty()
                && url.starts_with(ORIGIN) =>
        {
            Navigation::Allow
        }
        "http" | "https" if parsed.host_str().is_some() => {
            Navigation::OpenInBrowser(parsed.to_string())
        }
        _ => Navigation::Refuse,
    }
}

/// Opens `url` in the person's browser (`xdg-open`, which honours `$BROWSER`), without
/// waiting for it.
pub fn open_in_browser(url: &str) {
    match std::process::Command::new("xdg-open")
        .arg(url)
        .stdin(std::process::Stdio::null())
        .spawn()
    {
        Ok(mut child) => {
            // Reaped in the background: xdg-open returns once the browser has the URL.
            std::thread::spawn(move || child.wait());
        }
        Err(e) => tracing::warn!("cannot open {url} in the browser (xdg-open): {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_app_origin_stays_in_the_window() {
        for (url, expected) in [
            ("capbridge-ui://app/index.html", Navigation::Allow),
            ("capbridge-ui://app/prompt.html#req-1", Navigation::Allow),
            ("capbridge-ui://other/index.html", Navigation::Refuse),
            ("capbridge-ui://app:1/index.html", Navigation::Refuse),
            ("capbridge-ui://x@app/index.html", Navigation::Refuse),
            (
                "https://example.com/a?b",
                Navigation::OpenInBrowser("https://example.com/a?b".into()),
            ),
            (
                "http://127.0.0.1:47832/",
                Navigation::OpenInBrowser("http://127.0.0.1:47832/".into()),
            ),
            ("file:///etc/passwd", Navigation::Refuse),
            ("javascript:alert(1)", Navigation::Refuse),
            ("data:text/html,<b>x</b>", Navigation::Refuse),
            ("blob:capbridge-ui://app/1", Navigation::Refuse),
            ("about:blank", Navigation::Refuse),
            ("osloop://open", Navigation::Refuse),
            ("ftp://example.com/", Navigation::Refuse),
            ("not a url", Navigation::Refuse),
        ] {
            assert_eq!(decide(url), expected, "{url}");
        }
    }
}
