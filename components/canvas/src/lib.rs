//! The canvas component: an HTML overlay on the screen.
//!
//! A thin layer over `capbridge:host/canvas`: the host checks the sizes, keeps who owns the
//! overlay (the session that showed it), and the desktop shell shows it.

// The generated glue passes `show(html, position)` as eight flat arguments (the canonical ABI).
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({ world: "canvas", generate_all });

use capbridge::host::canvas as host;

struct Canvas;

impl Guest for Canvas {
    fn show(html: String, position: Position) -> Result<(), Error> {
        host::show(&html, position)
    }

    fn update(patch: Patch) -> Result<(), Error> {
        host::update(&patch)
    }

    fn hide() -> Result<(), Error> {
        host::hide()
    }
}

export!(Canvas);
