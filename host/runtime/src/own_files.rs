//! capbridge's own files and port, which no component may reach.
//!
//! The config directory, the data directory, the compile cache (native code the host loads and
//! runs), the components directory and the policy directory decide what every component may do.
//! A component that could write any of them could grant itself anything, and one that could read
//! them learns what the others may do. So a directory grant or a person's pick that is one of
//! them, lies inside one, or contains one is refused (at load, or at the pick), naming the clash.
//! Likewise a network grant that names this machine at the bridge's own port: a component must
//! not become a local client of the contract.

use std::path::{Path, PathBuf};

use capbridge_policy::NetworkGrant;

/// capbridge's own directories and the bridge's port.
#[derive(Clone, Debug, Default)]
pub struct OwnFiles {
    dirs: Vec<(&'static str, PathBuf)>,
    port: Option<u16>,
}

impl OwnFiles {
    /// Starts an empty set; add to it with [`Self::with_path`] and [`Self::with_port`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one of capbridge's directories (or files), under what it is (`compile cache`).
    pub fn with_path(mut self, what: &'static str, dir: &Path) -> Self {
        let dir = absolute(dir);
        if !self.dirs.iter().any(|(_, d)| *d == dir) {
            self.dirs.push((what, dir));
        }
        self
    }

    /// The port the bridge serves the contract on.
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = (port != 0).then_some(port);
        self
    }

    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// Why `path` may not be opened to a component, if it may not.
    pub fn clash(&self, path: &Path) -> Option<String> {
        let path = absolute(path);
        self.dirs.iter().find_map(|(what, dir)| {
            if path == *dir {
                Some(format!("it is capbridge's {what} ({})", dir.display()))
            } else if dir.starts_with(&path) {
                Some(format!(
                    "it contains capbridge's {what} ({})",
                    dir.display()
                ))
            } else if path.starts_with(dir) {
                Some(format!(
                    "it lies inside capbridge's {what} ({})",
                    dir.display()
                ))
            } else {
                None
            }
        })
    }

    /// Why `path` may not be a place a component works in (a command's working directory), if
    /// it is one of capbridge's own directories or lies inside one. Containing one is fine: a
    /// working directory opens nothing to the component.
    pub fn within(&self, path: &Path) -> Option<String> {
        let path = absolute(path);
        self.dirs.iter().find_map(|(what, dir)| {
            path.starts_with(dir).then(|| {
                format!(
                    "it is or lies inside capbridge's {what} ({})",
                    dir.display()
                )
            })
        })
    }

    /// Why `grant` may not be given to a component, if it reaches the bridge itself.
    pub fn network_clash(&self, grant: &NetworkGrant) -> Option<String> {
        let port = self.port?;
        let local = grant.names_private_address()
            || grant.host.eq_ignore_ascii_case("localhost")
            || grant.host.ends_with(".localhost");
        (local && grant.port == port).then(|| {
            format!(
                "{:?} reaches the bridge's own port {port} on this machine; a component may not \
                 call the contract",
                grant.text
            )
        })
    }
}

/// `path` made absolute and, where it exists, with symbolic links resolved, so that two
/// spellings of one directory compare equal.
fn absolute(path: &Path) -> PathBuf {
    if let Ok(real) = std::fs::canonicalize(path) {
        return real;
    }
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|cwd| cwd.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    };
    // The longest existing ancestor resolved, the rest as written.
    let mut missing = Vec::new();
    let mut existing = joined.as_path();
    while let Some(parent) = existing.parent() {
        missing.push(existing.file_name().map(PathBuf::from).unwrap_or_default());
        existing = parent;
        if let Ok(real) = std::fs::canonicalize(existing) {
            return missing.iter().rev().fold(real, |acc, part| acc.join(part));
        }
    }
    joined
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(root: &Path) -> OwnFiles {
        OwnFiles::new()
            .with_path("policy directory", &root.join("policy"))
            .with_path("compile cache", &root.join("cache/compiled"))
            .with_port(47832)
    }

    #[test]
    fn directories_equal_to_inside_or_containing_own_files_clash() {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path();
        std::fs::create_dir_all(root.join("policy")).unwrap();
        std::fs::create_dir_all(root.join("work")).unwrap();
        let own = own(root);
        let clash = own.clash(&root.join("policy")).unwrap();
        assert!(
            clash.contains("it is capbridge's policy directory"),
            "{clash}"
        );
        let clash = own.clash(root).unwrap();
        assert!(clash.contains("it contains capbridge's"), "{clash}");
        let clash = own.clash(&root.join("cache")).unwrap();
        assert!(clash.contains("compile cache"), "{clash}");
        let clash = own.clash(&root.join("policy/sub")).unwrap();
        assert!(clash.contains("lies inside"), "{clash}");
        assert_eq!(own.clash(&root.join("work")), None);
        // A sibling whose name starts the same is not inside.
        assert_eq!(own.clash(&root.join("policy2")), None);
        // Another spelling of the same place (a symbolic link) still clashes.
        std::os::unix::fs::symlink(root.join("policy"), root.join("link")).unwrap();
        assert!(own.clash(&root.join("link")).is_some());
    }

    #[test]
    fn network_grants_naming_the_bridge_port_on_this_machine_clash() {
        let own = own(Path::new("/nonexistent"));
        for text in [
            "http://127.0.0.1:47832",
            "http://localhost:47832",
            "http://[::1]:47832",
            "http://127.0.0.2:47832",
        ] {
            let grant = NetworkGrant::parse(text).unwrap();
            assert!(own.network_clash(&grant).is_some(), "{text}");
        }
        for text in ["http://127.0.0.1:8080", "https://example.com:47832"] {
            let grant = NetworkGrant::parse(text).unwrap();
            assert_eq!(own.network_clash(&grant), None, "{text}");
        }
        assert_eq!(
            OwnFiles::new().network_clash(&NetworkGrant::parse("http://127.0.0.1:47832").unwrap()),
            None,
            "no port known, no clash"
        );
    }
}
