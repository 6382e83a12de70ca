//! `capbridge:host/screen`: what is on the person's screen now, as a PNG image (seed 001's
//! `desktop.screenshot`).
//!
//! Read from the X server named by `DISPLAY` (X11, or XWayland), one connection per call, off
//! the async threads. Wayland without X needs the ScreenCast portal: not supported yet, and
//! said so. Every capture is audited (the region, never the image).

use std::sync::Arc;

use capbridge_policy::{ExplainLine, Grant, GrantContext, GrantKind, Policy};
use serde_json::json;
use wasmtime::component::{HasSelf, Linker};

use super::capbridge::host::screen::{self as wit, Host, Image, Region as GuestRegion};
use super::{Capability, GuestError, HostContext, Service};
use crate::audit::{AuditLog, Outcome};
use crate::state::HostState;

/// The capability: `grants.screen = true`.
pub struct Screen;

#[derive(Debug)]
pub struct ScreenGrant;

impl Grant for ScreenGrant {
    fn explain(&self, _policy: &Policy) -> Vec<ExplainLine> {
        vec![ExplainLine::risky(
            "Can read everything on the screen as images: every window, capbridge's own \
             included."
                .to_string(),
            Some(
                "it sees what the person sees: messages, documents, anything typed in the clear"
                    .to_string(),
            ),
        )]
    }
}

impl GrantKind for Screen {
    fn key(&self) -> &'static str {
        "screen"
    }

    fn schema(&self, _generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        super::flag_schema(
            "Whether the component may read the screen as images (`capbridge:host/screen`).",
        )
    }

    fn parse(
        &self,
        value: toml::Value,
        _cx: &mut GrantContext<'_>,
    ) -> Result<Option<Arc<dyn Grant>>, toml::de::Error> {
        super::read_flag(value, ScreenGrant)
    }

    fn not_granted(&self) -> &'static str {
        "no screenshots"
    }

    fn widening(&self) -> &'static str {
        "granted where it was not"
    }
}

impl Capability for Screen {
    fn interfaces(&self) -> &'static [&'static str] {
        &["capbridge:host/screen"]
    }

    fn summary(&self) -> &'static str {
        "read the screen as images (every window, capbridge's own included)"
    }

    fn add_to_linker(&self, linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
        wit::add_to_linker::<_, HasSelf<HostState>>(linker, |s| s)
    }

    fn start(&self, host: &HostContext<'_>) -> Option<Arc<dyn Service>> {
        Some(Arc::new(ScreenService {
            audit: host.audit.clone(),
        }))
    }
}

/// A part of the screen, in pixels (as the guest gives it: fractions allowed).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Region {
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
}

/// Whole pixels: `x`, `y` and the size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pixels {
    x: u16,
    y: u16,
    width: u16,
    height: u16,
}

pub struct ScreenService {
    audit: AuditLog,
}

impl Service for ScreenService {}

impl ScreenService {
    /// The screen, or `region` of it, as a PNG.
    pub async fn capture(
        &self,
        component: &str,
        session: Option<u64>,
        region: Option<Region>,
    ) -> Result<Image, GuestError> {
        let result = match region.map(check_region).transpose() {
            Ok(region) => tokio::task::spawn_blocking(move || x11::capture(region))
                .await
                .unwrap_or_else(|e| Err(GuestError::Unavailable(format!("capture failed: {e}")))),
            Err(e) => Err(e),
        };
        let (outcome, detail) = match &result {
            Ok(image) => (
                Outcome::Allowed,
                json!({ "region": region, "width": image.width, "height": image.height }),
            ),
            Err(e) => (
                Outcome::Denied,
                json!({ "region": region, "error": e.to_string() }),
            ),
        };
        self.audit
            .record("screen.captured", Some(component), session, outcome, detail);
        result
    }
}

/// Finite, positive, and within what an X screen can be; the screen's own size is checked
/// against it when captured.
fn check_region(region: Region) -> Result<Region, GuestError> {
    let Region {
        x,
        y,
        width,
        height,
    } = region;
    if ![x, y, width, height].iter().all(|v| v.is_finite()) {
        return Err(GuestError::InvalidArgument(
            "region: x, y, width and height must be finite numbers".into(),
        ));
    }
    if x < 0.0 || y < 0.0 || width <= 0.0 || height <= 0.0 {
        return Err(GuestError::InvalidArgument(
            "region: x and y must be at least 0, width and height more than 0".into(),
        ));
    }
    Ok(region)
}

/// `region` in whole pixels (rounded outward) if it lies on a `screen_width` × `screen_height`
/// screen.
fn pixels(
    region: Option<Region>,
    screen_width: u16,
    screen_height: u16,
) -> Result<Pixels, GuestError> {
    let Some(r) = region else {
        return Ok(Pixels {
            x: 0,
            y: 0,
            width: screen_width,
            height: screen_height,
        });
    };
    let (left, top) = (r.x.floor(), r.y.floor());
    let (right, bottom) = ((r.x + r.width).ceil(), (r.y + r.height).ceil());
    if right > f64::from(screen_width) || bottom > f64::from(screen_height) {
        return Err(GuestError::InvalidArgument(format!(
            "region: {}×{} at ({}, {}) does not lie on the {screen_width}×{screen_height} screen",
            r.width, r.height, r.x, r.y
        )));
    }
    // Within the screen, so each fits in u16.
    Ok(Pixels {
        x: left as u16,
        y: top as u16,
        width: (right - left) as u16,
        height: (bottom - top) as u16,
    })
}

mod x11 {
    use x11rb::connection::Connection;
    use x11rb::protocol::xproto::{ConnectionExt as _, ImageFormat, ImageOrder};

    use super::{pixels, GuestError, Image, Pixels, Region};

    /// The screen, or `region` of it, read from the X server of `DISPLAY`.
    pub fn capture(region: Option<Region>) -> Result<Image, GuestError> {
        let display = std::env::var_os("DISPLAY").filter(|d| !d.is_empty());
        if display.is_none() {
            let why = if std::env::var_os("WAYLAND_DISPLAY").is_some_and(|d| !d.is_empty()) {
                "this Wayland session has no X display (DISPLAY); screen capture through the \
                 ScreenCast portal is not supported yet"
            } else {
                "no display: capbridge runs without one (DISPLAY is not set)"
            };
            return Err(GuestError::Unavailable(why.into()));
        }
        let unavailable = |e: &dyn std::fmt::Display| {
            GuestError::Unavailable(format!("cannot read the screen: {e}"))
        };
        let (connection, screen) = x11rb::connect(None).map_err(|e| unavailable(&e))?;
        let setup = connection.setup();
        let root = &setup.roots[screen];
        let area = pixels(region, root.width_in_pixels, root.height_in_pixels)?;
        let reply = connection
            .get_image(
                ImageFormat::Z_PIXMAP,
                root.root,
                area.x as i16,
                area.y as i16,
                area.width,
                area.height,
                !0,
            )
            .map_err(|e| unavailable(&e))?
            .reply()
            .map_err(|e| unavailable(&e))?;
        let bits = setup
            .pixmap_formats
            .iter()
            .find(|f| f.depth == reply.depth)
            .map(|f| f.bits_per_pixel);
        let visual = root
            .allowed_depths
            .iter()
            .flat_map(|d| &d.visuals)
            .find(|v| v.visual_id == reply.visual);
        // The common case, and the only one read here: 24-bit colour in 32-bit pixels, red
        // in the high byte, little-endian (every X server on x86 and ARM Linux).
        let supported = bits == Some(32)
            && setup.image_byte_order == ImageOrder::LSB_FIRST
            && visual.is_some_and(|v| {
                v.red_mask == 0xff_0000 && v.green_mask == 0xff00 && v.blue_mask == 0xff
            });
        if !supported {
            return Err(GuestError::Unavailable(format!(
                "cannot read the screen: its pixel format (depth {}, {bits:?} bits per pixel) is \
                 not supported",
                reply.depth
            )));
        }
        let rgb: Vec<u8> = reply
            .data
            .chunks_exact(4)
            .flat_map(|bgrx| [bgrx[2], bgrx[1], bgrx[0]])
            .collect();
        Ok(Image {
            png: encode(&rgb, area)?,
            width: u32::from(area.width),
            height: u32::from(area.height),
        })
    }

    fn encode(rgb: &[u8], area: Pixels) -> Result<Vec<u8>, GuestError> {
        let mut png = Vec::new();
        let mut encoder =
            png::Encoder::new(&mut png, u32::from(area.width), u32::from(area.height));
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Fast);
        let failed = |e: png::EncodingError| GuestError::Unavailable(format!("PNG: {e}"));
        let mut writer = encoder.write_header().map_err(failed)?;
        writer.write_image_data(rgb).map_err(failed)?;
        writer.finish().map_err(failed)?;
        Ok(png)
    }
}

impl From<GuestRegion> for Region {
    fn from(r: GuestRegion) -> Self {
        Region {
            x: r.x,
            y: r.y,
            width: r.width,
            height: r.height,
        }
    }
}

impl HostState {
    fn screen(&self) -> wasmtime::Result<&ScreenService> {
        self.grants
            .services
            .get::<ScreenService>()
            .ok_or_else(|| wasmtime::format_err!("the screen service is not running"))
    }
}

impl Host for HostState {
    async fn capture(
        &mut self,
        region: Option<GuestRegion>,
    ) -> wasmtime::Result<Result<Image, GuestError>> {
        let grants = &self.grants;
        Ok(self
            .screen()?
            .capture(
                &grants.policy.component_id,
                grants.session,
                region.map(Region::from),
            )
            .await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(x: f64, y: f64, width: f64, height: f64) -> Region {
        Region {
            x,
            y,
            width,
            height,
        }
    }

    #[test]
    fn regions_are_checked_and_rounded_outward() {
        assert!(check_region(region(f64::NAN, 0.0, 1.0, 1.0)).is_err());
        assert!(check_region(region(-1.0, 0.0, 1.0, 1.0)).is_err());
        assert!(check_region(region(0.0, 0.0, 0.0, 1.0)).is_err());
        assert!(check_region(region(0.0, 0.0, f64::INFINITY, 1.0)).is_err());
        assert_eq!(
            pixels(Some(region(10.5, 20.0, 5.0, 4.25)), 100, 100).unwrap(),
            Pixels {
                x: 10,
                y: 20,
                width: 6,
                height: 5
            }
        );
        assert_eq!(
            pixels(None, 1280, 900).unwrap(),
            Pixels {
                x: 0,
                y: 0,
                width: 1280,
                height: 900
            }
        );
        assert!(pixels(Some(region(90.0, 0.0, 11.0, 1.0)), 100, 100).is_err());
        assert!(pixels(Some(region(0.0, 0.0, 100.0, 100.0)), 100, 100).is_ok());
    }
}
