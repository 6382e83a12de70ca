//! The desktop component: seed 001's desktop bridge, over the host's `capbridge:host/screen`.
//! The host reads the screen and its text; this component shapes the answers as seed 001 does
//! (images as base64 PNG).

wit_bindgen::generate!({ world: "desktop", generate_all });

use base64::Engine as _;
use capbridge::host::screen as host;

struct Desktop;

impl Guest for Desktop {
    fn screenshot(region: Option<Region>) -> Result<Screenshot, Error> {
        let image = host::capture(region)?;
        Ok(Screenshot {
            image_base64: base64::engine::general_purpose::STANDARD.encode(&image.png),
            width: image.width,
            height: image.height,
        })
    }

    fn ocr(image_base64: Option<String>) -> Result<Text, Error> {
        let png = image_base64
            .map(|image| {
                base64::engine::general_purpose::STANDARD
                    .decode(image.trim())
                    .map_err(|e| Error::InvalidArgument(format!("image-base64: not base64: {e}")))
            })
            .transpose()?;
        host::read_text(png.as_deref())
    }

    fn ping() -> String {
        "pong".to_string()
    }
}

export!(Desktop);
