//! The desktop component: seed 001's desktop bridge, over the host's `screen`,
//! `accessibility`, `input` and `canvas` interfaces. The host reads the screen and the
//! accessibility tree and synthesizes input (and asks the person before any of it acts); this
//! component shapes seed 001's methods over them: images as base64 PNG, a target as a ref or a
//! point, defaults as the seed has them.

// The generated glue passes some exports' arguments flat (the canonical ABI).
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({ world: "desktop", generate_all });

use base64::Engine as _;
use capbridge::host::accessibility as tree;
use capbridge::host::canvas;
use capbridge::host::input::{self, Target};
use capbridge::host::process;
use capbridge::host::screen;

/// How long a launched application may run (it ends with its session before that).
const LAUNCHED_APP_MS: u64 = 24 * 60 * 60 * 1000;

/// A drag's duration when none is given.
const DEFAULT_DRAG_MS: u64 = 500;

struct Desktop;

/// The target of an action: a ref, or a point; exactly one. `what` names the arguments in
/// errors (`start-` for a drag's start).
fn target(
    what: &str,
    reference: Option<String>,
    x: Option<f64>,
    y: Option<f64>,
) -> Result<Target, Error> {
    match (reference, x, y) {
        (Some(reference), None, None) => Ok(Target::Element(reference)),
        (None, Some(x), Some(y)) => Ok(Target::Point(Point { x, y })),
        (Some(_), _, _) => Err(Error::InvalidArgument(format!(
            "give `{what}ref` or `{what}x` and `{what}y`, not both"
        ))),
        (None, _, _) => Err(Error::InvalidArgument(format!(
            "give `{what}ref`, or both `{what}x` and `{what}y`"
        ))),
    }
}

/// A target when one is given; none when nothing is.
fn target_if_any(
    reference: Option<String>,
    x: Option<f64>,
    y: Option<f64>,
) -> Result<Option<Target>, Error> {
    if reference.is_none() && x.is_none() && y.is_none() {
        Ok(None)
    } else {
        target("", reference, x, y).map(Some)
    }
}

/// Clicks `count` times with `button` (default left) at the target.
fn click(
    reference: Option<String>,
    x: Option<f64>,
    y: Option<f64>,
    button: Option<MouseButton>,
    count: u32,
) -> Result<Point, Error> {
    input::click(
        &target("", reference, x, y)?,
        button.unwrap_or(MouseButton::Left),
        count,
    )
}

fn region_of(frame: capbridge::host::types::Rect) -> Region {
    Region {
        x: f64::from(frame.x),
        y: f64::from(frame.y),
        width: f64::from(frame.width),
        height: f64::from(frame.height),
    }
}

impl Guest for Desktop {
    fn screenshot(region: Option<Region>) -> Result<Screenshot, Error> {
        let image = screen::capture(region)?;
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
        screen::read_text(png.as_deref())
    }

    fn ax_tree(app_bundle_id: Option<String>, max_depth: Option<u32>) -> Result<Vec<Node>, Error> {
        tree::tree(app_bundle_id.as_deref(), max_depth)
    }

    fn snapshot(
        app_bundle_id: Option<String>,
        max_depth: Option<u32>,
        include_non_interactive: Option<bool>,
    ) -> Result<UiSnapshot, Error> {
        let snapshot = tree::snapshot(
            app_bundle_id.as_deref(),
            max_depth,
            include_non_interactive.unwrap_or(false),
        )?;
        Ok(UiSnapshot {
            elements: snapshot
                .elements
                .into_iter()
                .map(|e| ResolvedElement {
                    ref_id: e.ref_,
                    role: e.role,
                    label: e.label,
                    frame: region_of(e.frame),
                })
                .collect(),
            stats: snapshot.stats,
        })
    }

    fn click(
        ref_: Option<String>,
        x: Option<f64>,
        y: Option<f64>,
        button: Option<MouseButton>,
    ) -> Result<Point, Error> {
        click(ref_, x, y, button, 1)
    }

    fn double_click(
        ref_: Option<String>,
        x: Option<f64>,
        y: Option<f64>,
        button: Option<MouseButton>,
    ) -> Result<Point, Error> {
        click(ref_, x, y, button, 2)
    }

    fn type_text(ref_: Option<String>, text: String) -> Result<(), Error> {
        let target = ref_.map(Target::Element);
        input::type_text(target.as_ref(), &text)
    }

    fn key_combo(keys: Vec<String>) -> Result<(), Error> {
        input::key_combo(&keys)
    }

    fn scroll(
        ref_: Option<String>,
        x: Option<f64>,
        y: Option<f64>,
        delta_x: f64,
        delta_y: f64,
    ) -> Result<(), Error> {
        let target = target_if_any(ref_, x, y)?;
        input::scroll(target.as_ref(), delta_x, delta_y)
    }

    fn drag(
        start_ref: Option<String>,
        start_x: Option<f64>,
        start_y: Option<f64>,
        end_ref: Option<String>,
        end_x: Option<f64>,
        end_y: Option<f64>,
        duration_ms: Option<u64>,
    ) -> Result<(), Error> {
        let start = target("start_", start_ref, start_x, start_y)?;
        let end = target("end_", end_ref, end_x, end_y)?;
        let duration = duration_ms.unwrap_or(DEFAULT_DRAG_MS);
        let duration = u32::try_from(duration).map_err(|_| {
            Error::InvalidArgument(format!("duration_ms is {duration}: at most 10000"))
        })?;
        input::drag(&start, &end, MouseButton::Left, duration)
    }

    fn hover(ref_: Option<String>, x: Option<f64>, y: Option<f64>) -> Result<Point, Error> {
        input::move_to(&target("", ref_, x, y)?)
    }

    fn paste(text: String) -> Result<(), Error> {
        input::paste(&text)
    }

    fn launch_app(bundle_id: String) -> Result<Run, Error> {
        let name = bundle_id.trim();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(Error::InvalidArgument(format!(
                "bundle_id `{bundle_id}`: one program, a bare name or an absolute path, with no \
                 arguments"
            )));
        }
        // A command like any other: the person approves it (or a rule they made does).
        let command = process::Command {
            program: name.to_string(),
            args: Vec::new(),
            cwd: None,
            env: Vec::new(),
            stdin: None,
        };
        process::start(&process::Request {
            kind: process::RequestKind::Command,
            template: command.clone(),
            resolved: command,
            timeout_ms: LAUNCHED_APP_MS,
        })
    }

    fn window_list() -> Result<Vec<Window>, Error> {
        input::windows()
    }

    fn focus_window(window_id: u32) -> Result<(), Error> {
        input::focus_window(window_id)
    }

    fn canvas_show(html: String, position: Position) -> Result<(), Error> {
        canvas::show(&html, position)
    }

    fn canvas_update(patch: Patch) -> Result<(), Error> {
        canvas::update(&patch)
    }

    fn canvas_hide() -> Result<(), Error> {
        canvas::hide()
    }

    fn ping() -> String {
        "pong".to_string()
    }
}

export!(Desktop);
