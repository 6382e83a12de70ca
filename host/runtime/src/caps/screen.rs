//! `capbridge:host/screen`: what is on the person's screen now, as a PNG image (seed 001's
//! `desktop.screenshot`).
//!
//! Read from the X server named by `DISPLAY` (X11, or XWayland), one connection per call, off
//! the async threads. Wayland without X needs the ScreenCast portal: not supported yet, and
//! said so. Text is read off an image, or off the screen, by Tesseract (seed 001's
//! `desktop.ocr`), run as a program with Debian's language data. Every capture and every read
//! is audited (the region and sizes, never the image or the text).

use std::sync::Arc;
use std::time::Duration;

use capbridge_policy::{ExplainLine, Grant, GrantContext, GrantKind, Policy};
use serde_json::json;
use wasmtime::component::{HasSelf, Linker};

use super::capbridge::host::screen::{self as wit, Host, Image, Region as GuestRegion, Text, Word};
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
            "Can read everything on the screen, as images and as text (OCR): every window, \
             capbridge's own included."
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
            "Whether the component may read the screen as images and text (`capbridge:host/screen`).",
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
        "read the screen as images and text (every window, capbridge's own included)"
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

/// Largest image `read-text` takes.
pub const MAX_OCR_BYTES: usize = 32 * 1024 * 1024;
/// Largest side of an image `read-text` takes, in pixels.
pub const MAX_OCR_SIDE: u32 = 8192;
/// Longest one `read-text` may take.
pub const OCR_DEADLINE: Duration = Duration::from_secs(30);

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

impl ScreenService {
    /// The text in `png`, or on the whole screen when it is `None`.
    pub async fn read_text(
        &self,
        component: &str,
        session: Option<u64>,
        png: Option<Vec<u8>>,
    ) -> Result<Text, GuestError> {
        let source = if png.is_some() { "image" } else { "screen" };
        let result = async {
            let png = match png {
                Some(png) => {
                    check_png(&png)?;
                    png
                }
                None => {
                    tokio::task::spawn_blocking(|| x11::capture(None))
                        .await
                        .map_err(|e| GuestError::Unavailable(format!("capture failed: {e}")))??
                        .png
                }
            };
            ocr::read(png).await
        }
        .await;
        let (outcome, detail) = match &result {
            Ok(text) => (
                Outcome::Allowed,
                json!({ "source": source, "words": text.words.len() }),
            ),
            Err(e) => (
                Outcome::Denied,
                json!({ "source": source, "error": e.to_string() }),
            ),
        };
        self.audit.record(
            "screen.text_read",
            Some(component),
            session,
            outcome,
            detail,
        );
        result
    }
}

/// A PNG within the sizes `read-text` takes.
fn check_png(png: &[u8]) -> Result<(), GuestError> {
    if png.len() > MAX_OCR_BYTES {
        return Err(GuestError::TooLarge(format!(
            "the image is {} bytes; at most {MAX_OCR_BYTES}",
            png.len()
        )));
    }
    let info = png::Decoder::new(std::io::Cursor::new(png))
        .read_info()
        .map_err(|e| GuestError::InvalidArgument(format!("not a PNG image: {e}")))?;
    let (width, height) = (info.info().width, info.info().height);
    if width > MAX_OCR_SIDE || height > MAX_OCR_SIDE {
        return Err(GuestError::TooLarge(format!(
            "the image is {width}×{height} pixels; at most {MAX_OCR_SIDE} on a side"
        )));
    }
    Ok(())
}

mod ocr {
    use std::process::Stdio;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::{GuestError, Text, Word, OCR_DEADLINE};

    /// Most output read from Tesseract.
    const MAX_OUTPUT: u64 = 16 * 1024 * 1024;

    /// Tesseract's reading of `png`: sparse text (`--psm 11`, as screens have it), English.
    pub async fn read(png: Vec<u8>) -> Result<Text, GuestError> {
        let mut child = tokio::process::Command::new("tesseract")
            .args(["stdin", "stdout", "--psm", "11", "-l", "eng", "tsv"])
            // One thread: OCR must not take every core from the person's machine.
            .env("OMP_THREAD_LIMIT", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                GuestError::Unavailable(if e.kind() == std::io::ErrorKind::NotFound {
                    "Tesseract is not installed (Debian and Ubuntu: `sudo apt-get install \
                     tesseract-ocr`)"
                        .into()
                } else {
                    format!("cannot run Tesseract: {e}")
                })
            })?;
        let mut stdin = child.stdin.take().expect("piped");
        let mut stdout = child.stdout.take().expect("piped").take(MAX_OUTPUT);
        let mut stderr = child.stderr.take().expect("piped").take(64 * 1024);
        let run = async {
            let feed = async {
                // Tesseract may stop reading early (a bad image): its exit says why.
                let _ = stdin.write_all(&png).await;
                drop(stdin);
            };
            let mut out = Vec::new();
            let mut err = Vec::new();
            let (_, read_out, read_err) = tokio::join!(
                feed,
                stdout.read_to_end(&mut out),
                stderr.read_to_end(&mut err)
            );
            read_out.and(read_err)?;
            let status = child.wait().await?;
            Ok::<_, std::io::Error>((status, out, err))
        };
        let (status, out, err) = tokio::time::timeout(OCR_DEADLINE, run)
            .await
            .map_err(|_| {
                GuestError::Unavailable(format!("Tesseract took longer than {OCR_DEADLINE:?}"))
            })?
            .map_err(|e| GuestError::Unavailable(format!("Tesseract: {e}")))?;
        if !status.success() {
            let why = String::from_utf8_lossy(&err);
            let why = why.lines().last().unwrap_or("no message");
            return Err(GuestError::InvalidArgument(format!(
                "Tesseract could not read the image ({status}): {why}"
            )));
        }
        Ok(parse(&String::from_utf8_lossy(&out)))
    }

    /// Tesseract's TSV: one row per page, block, paragraph, line and word (level 5); words
    /// of one line share block, paragraph and line numbers.
    pub fn parse(tsv: &str) -> Text {
        let mut words = Vec::new();
        let mut lines: Vec<((u32, u32, u32), Vec<String>)> = Vec::new();
        for row in tsv.lines().skip(1) {
            let f: Vec<&str> = row.split('\t').collect();
            let number = |i: usize| f.get(i).and_then(|v| v.trim().parse::<u32>().ok());
            let text = f.get(11).map(|t| t.trim()).unwrap_or_default();
            if number(0) != Some(5) || text.is_empty() {
                continue;
            }
            let (Some(block), Some(paragraph), Some(line)) = (number(2), number(3), number(4))
            else {
                continue;
            };
            let key = (block, paragraph, line);
            match lines.last_mut() {
                Some((last, texts)) if *last == key => texts.push(text.to_string()),
                _ => lines.push((key, vec![text.to_string()])),
            }
            words.push(Word {
                text: text.to_string(),
                x: number(6).unwrap_or(0),
                y: number(7).unwrap_or(0),
                width: number(8).unwrap_or(0),
                height: number(9).unwrap_or(0),
                confidence: f.get(10).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0),
            });
        }
        let text = lines
            .iter()
            .map(|(_, texts)| texts.join(" "))
            .collect::<Vec<_>>()
            .join("\n");
        Text { text, words }
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
    async fn read_text(
        &mut self,
        png: Option<Vec<u8>>,
    ) -> wasmtime::Result<Result<Text, GuestError>> {
        let grants = &self.grants;
        Ok(self
            .screen()?
            .read_text(&grants.policy.component_id, grants.session, png)
            .await)
    }

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

    #[test]
    fn tesseract_rows_become_lines_and_words() {
        let tsv = "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext\n\
                   1\t1\t0\t0\t0\t0\t0\t0\t640\t480\t-1\t\n\
                   5\t1\t1\t1\t1\t1\t10\t20\t50\t12\t96.5\tHello\n\
                   5\t1\t1\t1\t1\t2\t64\t20\t80\t12\t91\tcapbridge\n\
                   5\t1\t2\t1\t1\t1\t10\t60\t30\t12\t88\tbye\n\
                   5\t1\t3\t1\t1\t1\t10\t90\t30\t12\t-1\t \n";
        let text = ocr::parse(tsv);
        assert_eq!(text.text, "Hello capbridge\nbye");
        assert_eq!(text.words.len(), 3);
        assert_eq!(
            (text.words[1].x, text.words[1].y, text.words[1].width),
            (64, 20, 80)
        );
        assert_eq!(text.words[0].confidence, 96.5);
        assert_eq!(ocr::parse("").text, "");
    }

    #[test]
    fn only_pngs_within_the_limits_are_read() {
        assert!(matches!(
            check_png(b"not a png"),
            Err(GuestError::InvalidArgument(_))
        ));
        let mut png = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut png, 9000, 1);
            encoder.set_color(png::ColorType::Grayscale);
            let mut writer = encoder.write_header().unwrap();
            writer.write_image_data(&vec![0; 9000]).unwrap();
        }
        assert!(matches!(check_png(&png), Err(GuestError::TooLarge(_))));
    }
}
