//! Input on X11: the XTEST extension (`FakeInput`) through `x11rb`, on one connection per call.
//! Keys are found in the server's keyboard map; a character the map lacks (most non-ASCII
//! text) is typed on a spare keycode mapped to it for the call and cleared after, as `xdotool`
//! does. The window manager's lists (EWMH) give the windows.
//!
//! A [`Display`] remembers what it pressed and remapped: whatever way an action ends (an
//! error, a stop, a panic), dropping it releases every key and button still down and clears
//! every keycode it mapped.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Duration;

use x11rb::connection::{Connection as _, RequestConnection as _};
use x11rb::protocol::xproto::{
    self, AtomEnum, ClientMessageEvent, ConnectionExt as _, EventMask, InputFocus, Keycode, Keysym,
};
use x11rb::protocol::xtest::ConnectionExt as _;
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;

use super::super::capbridge::host::input::{Point, Window};
use super::super::capbridge::host::types::Rect;
use super::{GuestError, Stop};

/// Keysyms of the modifiers and named keys.
pub const CONTROL: Keysym = 0xffe3;
const SHIFT: Keysym = 0xffe1;
const ALT: Keysym = 0xffe9;
const SUPER: Keysym = 0xffeb;
const RETURN: Keysym = 0xff0d;
const TAB: Keysym = 0xff09;

/// The key names `key-combo` knows, with their keysyms (single characters are known too).
const NAMED_KEYS: &[(&str, Keysym)] = &[
    ("ctrl", CONTROL),
    ("control", CONTROL),
    // On Linux the shortcuts seed 001's `cmd` means (cmd+c, cmd+v) are ctrl's.
    ("cmd", CONTROL),
    ("command", CONTROL),
    ("shift", SHIFT),
    ("alt", ALT),
    ("option", ALT),
    ("super", SUPER),
    ("win", SUPER),
    ("meta", SUPER),
    ("enter", RETURN),
    ("return", RETURN),
    ("tab", TAB),
    ("escape", 0xff1b),
    ("esc", 0xff1b),
    ("space", 0x20),
    ("backspace", 0xff08),
    ("delete", 0xffff),
    ("home", 0xff50),
    ("left", 0xff51),
    ("up", 0xff52),
    ("right", 0xff53),
    ("down", 0xff54),
    ("page-up", 0xff55),
    ("pageup", 0xff55),
    ("page-down", 0xff56),
    ("pagedown", 0xff56),
    ("end", 0xff57),
    ("insert", 0xff63),
];

/// The keysyms of `keys` (`["ctrl", "a"]`), or which key is not known.
pub fn keysyms_of_combo(keys: &[String]) -> Result<Vec<Keysym>, GuestError> {
    if keys.is_empty() || keys.len() > 8 {
        return Err(GuestError::InvalidArgument(format!(
            "keys has {} names: 1 to 8",
            keys.len()
        )));
    }
    keys.iter()
        .map(|key| {
            let name = key.trim().to_lowercase();
            if let Some((_, keysym)) = NAMED_KEYS.iter().find(|(n, _)| *n == name) {
                return Ok(*keysym);
            }
            if let Some(n) = name.strip_prefix('f').and_then(|n| n.parse::<u32>().ok()) {
                if (1..=24).contains(&n) {
                    return Ok(0xffbe + n - 1);
                }
            }
            let mut chars = name.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) if !c.is_control() => Ok(keysym_of(c)),
                _ => Err(GuestError::InvalidArgument(format!(
                    "unknown key `{key}`: use ctrl, shift, alt, super (cmd is ctrl), enter, \
                     tab, escape, space, backspace, delete, home, end, page-up, page-down, up, \
                     down, left, right, insert, f1…f24, or one character"
                ))),
            }
        })
        .collect()
}

/// The keysym that types `c`: Latin-1 by its code, `\n` Return, `\t` Tab, the rest Unicode.
fn keysym_of(c: char) -> Keysym {
    match c {
        '\n' | '\r' => RETURN,
        '\t' => TAB,
        ' '..='~' | '\u{a0}'..='\u{ff}' => c as u32,
        other => 0x0100_0000 | other as u32,
    }
}

/// One connection to the X server, with what input needs of it.
pub struct Display {
    conn: RustConnection,
    root: xproto::Window,
    width: u16,
    height: u16,
    own_pid: u32,
    /// Keys and buttons pressed and not released yet.
    pressed_keys: RefCell<Vec<Keycode>>,
    pressed_buttons: RefCell<Vec<u8>>,
    /// Spare keycodes mapped to a keysym and not cleared yet.
    remapped: RefCell<Vec<Keycode>>,
    /// Keysyms per keycode in the server's map (to clear a remapped one).
    per_keycode: Cell<u8>,
}

impl Drop for Display {
    fn drop(&mut self) {
        for code in self.pressed_keys.take().into_iter().rev() {
            let _ = self.fake(xproto::KEY_RELEASE_EVENT, code, 0, 0);
        }
        for button in self.pressed_buttons.take().into_iter().rev() {
            let _ = self.fake(xproto::BUTTON_RELEASE_EVENT, button, 0, 0);
        }
        let per = self.per_keycode.get().max(1);
        for code in self.remapped.take() {
            let _ = self
                .conn
                .change_keyboard_mapping(1, code, per, &vec![0; usize::from(per)]);
        }
        let _ = self.conn.sync();
    }
}

impl Display {
    /// The X server of `DISPLAY`, which must have XTEST.
    pub fn open() -> Result<Self, GuestError> {
        let (conn, screen) = super::super::display::connect("synthesize input")?;
        let has_xtest = conn
            .extension_information(x11rb::protocol::xtest::X11_EXTENSION_NAME)
            .map_err(unavailable)?
            .is_some();
        if !has_xtest {
            return Err(GuestError::Unavailable(
                "the X server has no XTEST extension: input cannot be synthesized".into(),
            ));
        }
        let root = &conn.setup().roots[screen];
        Ok(Display {
            root: root.root,
            width: root.width_in_pixels,
            height: root.height_in_pixels,
            own_pid: std::process::id(),
            conn,
            pressed_keys: RefCell::new(Vec::new()),
            pressed_buttons: RefCell::new(Vec::new()),
            remapped: RefCell::new(Vec::new()),
            per_keycode: Cell::new(1),
        })
    }

    /// `point` in whole pixels, checked to be on the screen and not on a capbridge window.
    pub fn reach(&self, point: Point) -> Result<(i16, i16), GuestError> {
        let inside = |v: f64, size: u16| v.is_finite() && v >= 0.0 && v < f64::from(size);
        if !inside(point.x, self.width) || !inside(point.y, self.height) {
            return Err(GuestError::InvalidArgument(format!(
                "({}, {}) is not on the screen ({}×{})",
                point.x, point.y, self.width, self.height
            )));
        }
        let (x, y) = (point.x.floor() as i16, point.y.floor() as i16);
        self.refuse_own_at(x, y)?;
        Ok((x, y))
    }

    /// Refuses a point on a window of this process (the prompt and status windows, the
    /// overlay).
    pub fn refuse_own_at(&self, x: i16, y: i16) -> Result<(), GuestError> {
        let top = self
            .conn
            .translate_coordinates(self.root, self.root, x, y)
            .map_err(unavailable)?
            .reply()
            .map_err(unavailable)?
            .child;
        if top != x11rb::NONE && self.owner_pid(top)? == Some(self.own_pid) {
            return Err(GuestError::Denied(format!(
                "({x}, {y}) is on one of capbridge's own windows: input never acts on them"
            )));
        }
        Ok(())
    }

    /// Refuses keys while a window of this process has the focus.
    pub fn refuse_own_focus(&self) -> Result<(), GuestError> {
        let mut window = self
            .conn
            .get_input_focus()
            .map_err(unavailable)?
            .reply()
            .map_err(unavailable)?
            .focus;
        // Up to the top-level window (a child of the root), whose subtree names its owner.
        for _ in 0..16 {
            if window == x11rb::NONE {
                // Keys go nowhere.
                return Ok(());
            }
            if window == u32::from(InputFocus::POINTER_ROOT) || window == self.root {
                // Keys go to the window under the pointer.
                let (x, y) = self.pointer()?;
                return self.refuse_own_at(x, y);
            }
            let tree = self
                .conn
                .query_tree(window)
                .map_err(unavailable)?
                .reply()
                .map_err(unavailable)?;
            if tree.parent == self.root {
                break;
            }
            window = tree.parent;
        }
        if self.owner_pid(window)? == Some(self.own_pid) {
            return Err(GuestError::Denied(
                "one of capbridge's own windows has the keyboard focus: input never types \
                 into them"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The process owning top-level `window`: its `_NET_WM_PID`, or that of the client window
    /// inside it (a window manager's frame has none). An X error is an error, never "not
    /// ours": the checks that use it fail closed.
    fn owner_pid(&self, window: xproto::Window) -> Result<Option<u32>, GuestError> {
        let pid_atom = self.atom(b"_NET_WM_PID")?;
        let mut level = vec![window];
        for _ in 0..3 {
            let mut next = Vec::new();
            for w in level {
                if let Some(pid) = self.cardinal(w, pid_atom) {
                    return Ok(Some(pid));
                }
                let tree = self
                    .conn
                    .query_tree(w)
                    .map_err(unavailable)?
                    .reply()
                    .map_err(unavailable)?;
                next.extend(tree.children);
            }
            level = next;
        }
        Ok(None)
    }

    fn atom(&self, name: &[u8]) -> Result<xproto::Atom, GuestError> {
        Ok(self
            .conn
            .intern_atom(false, name)
            .map_err(unavailable)?
            .reply()
            .map_err(unavailable)?
            .atom)
    }

    fn cardinal(&self, window: xproto::Window, property: xproto::Atom) -> Option<u32> {
        self.property32(window, property, AtomEnum::CARDINAL.into())?
            .first()
            .copied()
    }

    fn property32(
        &self,
        window: xproto::Window,
        property: xproto::Atom,
        kind: xproto::Atom,
    ) -> Option<Vec<u32>> {
        let reply = self
            .conn
            .get_property(false, window, property, kind, 0, 4096)
            .ok()?
            .reply()
            .ok()?;
        let values: Vec<u32> = reply.value32()?.collect();
        Some(values)
    }

    fn text_property(&self, window: xproto::Window, property: xproto::Atom) -> Option<String> {
        let reply = self
            .conn
            .get_property(false, window, property, AtomEnum::ANY, 0, 1024)
            .ok()?
            .reply()
            .ok()?;
        (!reply.value.is_empty()).then(|| String::from_utf8_lossy(&reply.value).into_owned())
    }

    fn fake(&self, kind: u8, detail: u8, x: i16, y: i16) -> Result<(), GuestError> {
        self.conn
            .xtest_fake_input(kind, detail, 0, self.root, x, y, 0)
            .map_err(unavailable)?;
        Ok(())
    }

    pub fn move_to(&self, x: i16, y: i16) -> Result<(), GuestError> {
        self.fake(xproto::MOTION_NOTIFY_EVENT, 0, x, y)
    }

    pub fn button(&self, button: u8, press: bool) -> Result<(), GuestError> {
        let kind = if press {
            xproto::BUTTON_PRESS_EVENT
        } else {
            xproto::BUTTON_RELEASE_EVENT
        };
        self.fake(kind, button, 0, 0)?;
        track(&self.pressed_buttons, button, press);
        Ok(())
    }

    fn key(&self, keycode: Keycode, press: bool) -> Result<(), GuestError> {
        let kind = if press {
            xproto::KEY_PRESS_EVENT
        } else {
            xproto::KEY_RELEASE_EVENT
        };
        self.fake(kind, keycode, 0, 0)?;
        track(&self.pressed_keys, keycode, press);
        Ok(())
    }

    /// Waits until the server has handled everything sent.
    pub fn sync(&self) -> Result<(), GuestError> {
        self.conn.sync().map_err(unavailable)
    }

    /// Where the pointer is.
    pub fn pointer(&self) -> Result<(i16, i16), GuestError> {
        let reply = self
            .conn
            .query_pointer(self.root)
            .map_err(unavailable)?
            .reply()
            .map_err(unavailable)?;
        Ok((reply.root_x, reply.root_y))
    }

    /// Types `text` into whatever has the focus, key by key. Between keys it stops at a stop
    /// (or an open prompt), and every few keys it checks again that the focus is not
    /// capbridge's.
    pub fn type_text(&self, text: &str, stop: &Stop) -> Result<(), GuestError> {
        let mut keys = Keys::load(self)?;
        for (i, c) in text.chars().enumerate() {
            stop.check()?;
            if i % 16 == 15 {
                self.refuse_own_focus()?;
            }
            let code = keys.code_of(self, keysym_of(c))?;
            self.press(&keys, code)?;
            self.release(&keys, code)?;
            self.sync()?;
        }
        keys.restore(self);
        Ok(())
    }

    /// Presses `keysyms` in order and releases them in reverse.
    pub fn combo(&self, keysyms: &[Keysym]) -> Result<(), GuestError> {
        let mut keys = Keys::load(self)?;
        let codes = keysyms
            .iter()
            .map(|k| keys.code_of(self, *k))
            .collect::<Result<Vec<_>, _>>()?;
        for code in &codes {
            self.press(&keys, *code)?;
        }
        for code in codes.iter().rev() {
            self.release(&keys, *code)?;
        }
        self.sync()?;
        keys.restore(self);
        Ok(())
    }

    /// Presses the key `code` names (Shift first when it needs Shift).
    fn press(&self, keys: &Keys, (code, shifted): (Keycode, bool)) -> Result<(), GuestError> {
        if shifted {
            self.key(keys.shift()?, true)?;
        }
        self.key(code, true)
    }

    /// Releases what [`Display::press`] pressed.
    fn release(&self, keys: &Keys, (code, shifted): (Keycode, bool)) -> Result<(), GuestError> {
        self.key(code, false)?;
        if shifted {
            self.key(keys.shift()?, false)?;
        }
        Ok(())
    }

    /// The top-level windows the window manager lists, bottom to top.
    pub fn windows(&self) -> Result<Vec<Window>, GuestError> {
        let list = self.atom(b"_NET_CLIENT_LIST_STACKING")?;
        let ids = self
            .property32(self.root, list, AtomEnum::WINDOW.into())
            .ok_or_else(|| {
                GuestError::Unavailable(
                    "no window manager lists the windows (EWMH _NET_CLIENT_LIST_STACKING)".into(),
                )
            })?;
        let active = self.atom(b"_NET_ACTIVE_WINDOW")?;
        let focused = self
            .property32(self.root, active, AtomEnum::WINDOW.into())
            .and_then(|v| v.first().copied());
        let name = self.atom(b"_NET_WM_NAME")?;
        let pid = self.atom(b"_NET_WM_PID")?;
        Ok(ids
            .into_iter()
            .filter_map(|id| {
                let geometry = self.conn.get_geometry(id).ok()?.reply().ok()?;
                let origin = self
                    .conn
                    .translate_coordinates(id, self.root, 0, 0)
                    .ok()?
                    .reply()
                    .ok()?;
                let title = self
                    .text_property(id, name)
                    .or_else(|| self.text_property(id, AtomEnum::WM_NAME.into()))
                    .unwrap_or_default();
                // WM_CLASS is "instance\0class\0": the class names the application.
                let app = self
                    .text_property(id, AtomEnum::WM_CLASS.into())
                    .map(|class| {
                        class
                            .split('\0')
                            .rfind(|s| !s.is_empty())
                            .unwrap_or_default()
                            .to_string()
                    })
                    .unwrap_or_default();
                Some(Window {
                    id,
                    title,
                    app,
                    pid: self.cardinal(id, pid),
                    frame: Rect {
                        x: i32::from(origin.dst_x),
                        y: i32::from(origin.dst_y),
                        width: u32::from(geometry.width),
                        height: u32::from(geometry.height),
                    },
                    focused: focused == Some(id),
                })
            })
            .collect())
    }

    /// Asks the window manager to raise and focus window `id`.
    pub fn focus(&self, id: u32) -> Result<(), GuestError> {
        let windows = self.windows()?;
        let window = windows
            .iter()
            .find(|w| w.id == id)
            .ok_or_else(|| GuestError::NotFound(format!("no window {id} (see the window list)")))?;
        if window.pid == Some(self.own_pid) {
            return Err(GuestError::Denied(format!(
                "window {id} is one of capbridge's own: input never acts on them"
            )));
        }
        let active = self.atom(b"_NET_ACTIVE_WINDOW")?;
        // Source 2: a pager, which window managers obey (1 is an application, which they may
        // refuse to let steal the focus).
        let message = ClientMessageEvent::new(32, id, active, [2, 0, 0, 0, 0]);
        self.conn
            .send_event(
                false,
                self.root,
                EventMask::SUBSTRUCTURE_REDIRECT | EventMask::SUBSTRUCTURE_NOTIFY,
                message,
            )
            .map_err(unavailable)?;
        self.sync()?;
        // The window manager does it on its own time: wait for it, briefly.
        for _ in 0..50 {
            let now = self
                .property32(self.root, active, AtomEnum::WINDOW.into())
                .and_then(|v| v.first().copied());
            if now == Some(id) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(GuestError::Unavailable(format!(
            "the window manager did not focus window {id} within 1 s"
        )))
    }
}

/// The server's keyboard map, and the spare keycodes mapped for this call.
struct Keys {
    first: Keycode,
    per: u8,
    keysyms: Vec<Keysym>,
    /// Keycodes with no keysym, for characters the map lacks.
    spare: Vec<Keycode>,
    /// Spare keycodes mapped in this call, by keysym.
    mapped: HashMap<Keysym, Keycode>,
}

impl Keys {
    fn load(display: &Display) -> Result<Self, GuestError> {
        let setup = display.conn.setup();
        let (first, last) = (setup.min_keycode, setup.max_keycode);
        let reply = display
            .conn
            .get_keyboard_mapping(first, last - first + 1)
            .map_err(unavailable)?
            .reply()
            .map_err(unavailable)?;
        let per = reply.keysyms_per_keycode;
        display.per_keycode.set(per);
        let spare = reply
            .keysyms
            .chunks(usize::from(per.max(1)))
            .enumerate()
            .filter(|(_, syms)| syms.iter().all(|s| *s == 0))
            .map(|(i, _)| first + i as u8)
            .collect();
        Ok(Keys {
            first,
            per,
            keysyms: reply.keysyms,
            spare,
            mapped: HashMap::new(),
        })
    }

    /// The Shift key's keycode.
    fn shift(&self) -> Result<Keycode, GuestError> {
        self.find(SHIFT)
            .map(|(code, _)| code)
            .ok_or_else(|| GuestError::Unavailable("the keyboard map has no Shift key".into()))
    }

    /// The keycode with `keysym` in its first two columns, and whether it needs Shift.
    fn find(&self, keysym: Keysym) -> Option<(Keycode, bool)> {
        let per = usize::from(self.per.max(1));
        self.keysyms.chunks(per).enumerate().find_map(|(i, syms)| {
            let code = self.first + i as u8;
            match syms.iter().take(2).position(|s| *s == keysym) {
                Some(0) => Some((code, false)),
                Some(_) => Some((code, true)),
                None => None,
            }
        })
    }

    /// A keycode typing `keysym`: from the map, else a spare one mapped to it now.
    fn code_of(
        &mut self,
        display: &Display,
        keysym: Keysym,
    ) -> Result<(Keycode, bool), GuestError> {
        if let Some(found) = self.find(keysym) {
            return Ok(found);
        }
        if let Some(code) = self.mapped.get(&keysym) {
            return Ok((*code, false));
        }
        if self.spare.is_empty() {
            // Every spare key is in use: clear them (after the application read the keys
            // typed with them) and start again.
            self.restore(display);
        }
        let code = self.spare.pop().ok_or_else(|| {
            GuestError::Unavailable(format!(
                "the keyboard map has no spare key to type U+{:04X}",
                keysym & 0x00ff_ffff
            ))
        })?;
        self.map(display, code, keysym)?;
        self.mapped.insert(keysym, code);
        // Applications re-read the map when told it changed: let them before the key comes.
        std::thread::sleep(Duration::from_millis(20));
        Ok((code, false))
    }

    fn map(&self, display: &Display, code: Keycode, keysym: Keysym) -> Result<(), GuestError> {
        let mut syms = vec![0; usize::from(self.per.max(1))];
        syms[0] = keysym;
        if syms.len() > 1 {
            syms[1] = keysym;
        }
        display
            .conn
            .change_keyboard_mapping(1, code, self.per.max(1), &syms)
            .map_err(unavailable)?;
        track(&display.remapped, code, keysym != 0);
        display.sync()
    }

    /// Clears the spare keys this call mapped, once the keys typed with them were read.
    fn restore(&mut self, display: &Display) {
        if self.mapped.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
        let codes: Vec<Keycode> = self.mapped.drain().map(|(_, code)| code).collect();
        for code in codes {
            let _ = self.map(display, code, 0);
            self.spare.push(code);
        }
    }
}

/// Notes `item` as held (`held`) or no longer.
fn track<T: PartialEq>(list: &RefCell<Vec<T>>, item: T, held: bool) {
    let mut list = list.borrow_mut();
    if held {
        list.push(item);
    } else if let Some(i) = list.iter().rposition(|x| *x == item) {
        list.remove(i);
    }
}

fn unavailable(e: impl std::fmt::Display) -> GuestError {
    GuestError::Unavailable(format!("the X server: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn combo(keys: &[&str]) -> Result<Vec<Keysym>, GuestError> {
        keysyms_of_combo(&keys.iter().map(|k| k.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn key_names_are_seed_001s_and_cmd_is_ctrl() {
        assert_eq!(combo(&["ctrl", "a"]).unwrap(), [CONTROL, u32::from(b'a')]);
        assert_eq!(combo(&["CMD", "C"]).unwrap(), [CONTROL, u32::from(b'c')]);
        assert_eq!(
            combo(&["shift", "F12", "enter"]).unwrap(),
            [SHIFT, 0xffc9, RETURN]
        );
        assert_eq!(combo(&["page-down"]).unwrap(), [0xff56]);
        for bad in [&[][..], &["hyper"], &["f25"], &["ab"]] {
            assert!(
                matches!(combo(bad), Err(GuestError::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn characters_are_latin1_or_unicode_keysyms() {
        assert_eq!(keysym_of('a'), 0x61);
        assert_eq!(keysym_of('é'), 0xe9);
        assert_eq!(keysym_of('世'), 0x0100_4e16);
        assert_eq!(keysym_of('\n'), RETURN);
        assert_eq!(keysym_of('\t'), TAB);
    }
}
