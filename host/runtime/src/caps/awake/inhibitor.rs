//! The system's sleep inhibition, behind a small trait so the holds' logic is tested without
//! D-Bus.

/// A taken inhibition; dropping it gives it back.
pub type Inhibition = Box<dyn Send>;

/// Something that can keep the machine awake.
pub trait Inhibitor: Send + Sync + 'static {
    /// What it asks, for messages (`org.freedesktop.ScreenSaver`).
    fn name(&self) -> &'static str;

    /// Takes the inhibition (blocking; called off the async threads), saying `reason`.
    fn inhibit(&self, reason: &str) -> Result<Inhibition, String>;
}

/// The `keepawake` crate: display inhibition, on Linux `org.freedesktop.ScreenSaver.Inhibit`
/// on the D-Bus session bus.
pub struct KeepAwakeInhibitor;

impl Inhibitor for KeepAwakeInhibitor {
    fn name(&self) -> &'static str {
        "org.freedesktop.ScreenSaver"
    }

    fn inhibit(&self, reason: &str) -> Result<Inhibition, String> {
        keepawake::Builder::default()
            .display(true)
            .reason(reason)
            .app_name("capbridge")
            .app_reverse_domain("dev.capbridge.capbridge")
            .create()
            .map(|lock| Box::new(lock) as Inhibition)
            .map_err(|e| {
                format!(
                    "{e} (capbridge asks org.freedesktop.ScreenSaver on the D-Bus session bus; \
                     is a desktop session running?)"
                )
            })
    }
}
