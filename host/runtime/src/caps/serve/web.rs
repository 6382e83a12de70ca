//! A component's web UI on disk: which file a request under the mount names, refusing anything
//! that would leave the directory or show a hidden file.

use std::path::{Path, PathBuf};

/// What a request path names in a web directory.
#[derive(Debug, PartialEq, Eq)]
pub enum StaticFile {
    /// This file (inside the directory, symlinks resolved).
    Found(PathBuf),
    /// Nothing there: the entry file answers (SPA fallback).
    Missing,
    /// A traversal, an encoded separator, a backslash, a hidden file, or a symlink out of the
    /// directory: answered 404, never the entry.
    Refused,
}

/// The file `raw` (the percent-encoded path after the mount, `/app.js`) names under `root`.
pub fn resolve(root: &Path, raw: &str) -> StaticFile {
    let mut relative = PathBuf::new();
    for segment in raw.split('/').filter(|s| !s.is_empty()) {
        let Ok(decoded) = percent_encoding::percent_decode_str(segment).decode_utf8() else {
            return StaticFile::Refused;
        };
        // Decoded once: what remains encoded (`%2e%2e` sent as `%252e%252e`) is refused too, as
        // is a separator or backslash that arrived encoded, and every dot-file (`.`, `..`,
        // `.env`, `.git`).
        if decoded.starts_with('.')
            || decoded.contains(['/', '\\', '%', '\0'])
            || segment.contains('\\')
        {
            return StaticFile::Refused;
        }
        relative.push(decoded.as_ref());
    }
    within(root, &relative)
}

/// `relative` under `root`, symlinks resolved, or why not.
pub fn within(root: &Path, relative: &Path) -> StaticFile {
    let Ok(root) = root.canonicalize() else {
        return StaticFile::Missing;
    };
    let candidate = root.join(relative);
    match candidate.canonicalize() {
        Ok(real) if !real.starts_with(&root) => StaticFile::Refused,
        // A link inside the directory to one of its hidden files is refused as the file is.
        Ok(real) if hidden(real.strip_prefix(&root).unwrap_or(&real)) => StaticFile::Refused,
        Ok(real) if real.is_file() => StaticFile::Found(real),
        Ok(_) => StaticFile::Missing,
        // A dangling symlink, or nothing: if a link in the path points out, say so.
        Err(_) if points_out(&root, relative) => StaticFile::Refused,
        Err(_) => StaticFile::Missing,
    }
}

/// Whether a part of `relative` is a dot-file or dot-directory.
fn hidden(relative: &Path) -> bool {
    relative
        .components()
        .any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
}

/// The web directory `dir` of a component whose own directory is `base`, symlinks resolved,
/// when it is inside `base` (a web directory that is a link to elsewhere serves nothing).
pub fn root_within(base: &Path, dir: &Path) -> Option<PathBuf> {
    let base = base.canonicalize().ok()?;
    let root = base.join(dir).canonicalize().ok()?;
    (root.starts_with(&base) && root.is_dir()).then_some(root)
}

/// Whether some prefix of `relative` is a symlink that resolves outside `root`.
fn points_out(root: &Path, relative: &Path) -> bool {
    let mut path = root.to_path_buf();
    for part in relative.components() {
        path.push(part);
        if path.is_symlink() {
            return match std::fs::read_link(&path) {
                Ok(target) => {
                    let target = path.parent().unwrap_or(root).join(target);
                    !normalize(&target).starts_with(root)
                }
                Err(_) => true,
            };
        }
    }
    false
}

/// `path` with `.` and `..` folded, without touching the disk.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The `Content-Type` of a file by its extension.
pub fn content_type(path: &Path) -> String {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    match mime.type_() {
        mime_guess::mime::TEXT => format!("{mime}; charset=utf-8"),
        _ if mime.subtype() == mime_guess::mime::JAVASCRIPT
            || mime.subtype() == mime_guess::mime::JSON =>
        {
            format!("{mime}; charset=utf-8")
        }
        _ => mime.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_inside_are_found_and_every_way_out_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let web = dir.path().join("web");
        std::fs::create_dir_all(web.join("assets")).unwrap();
        std::fs::write(web.join("index.html"), "<html></html>").unwrap();
        std::fs::write(web.join("assets/app.js"), "1").unwrap();
        std::fs::write(web.join(".env"), "SECRET=1").unwrap();
        std::fs::write(dir.path().join("secret.txt"), "secret").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret.txt"), web.join("out.txt")).unwrap();
        std::os::unix::fs::symlink(dir.path(), web.join("up")).unwrap();
        std::os::unix::fs::symlink("assets/app.js", web.join("inside.js")).unwrap();
        std::os::unix::fs::symlink(".env", web.join("env.txt")).unwrap();

        assert!(matches!(
            resolve(&web, "/assets/app.js"),
            StaticFile::Found(_)
        ));
        assert!(matches!(resolve(&web, "/inside.js"), StaticFile::Found(_)));
        assert!(matches!(
            resolve(&web, "/assets/%61pp.js"),
            StaticFile::Found(_)
        ));
        assert_eq!(resolve(&web, "/nothing/here"), StaticFile::Missing);
        assert_eq!(resolve(&web, "/assets"), StaticFile::Missing);
        assert!(root_within(dir.path(), Path::new("web")).is_some());
        std::os::unix::fs::symlink("/usr", dir.path().join("elsewhere")).unwrap();
        assert!(root_within(dir.path(), Path::new("elsewhere")).is_none());
        for hostile in [
            "/../secret.txt",
            "/assets/../../secret.txt",
            "/%2e%2e/secret.txt",
            "/%2E%2E%2Fsecret.txt",
            "/%252e%252e/secret.txt",
            "/..%5csecret.txt",
            "/..\\secret.txt",
            "/out.txt",
            "/up/secret.txt",
            "/up/nothing",
            "/.env",
            "/%2eenv",
            "/env.txt",
            "/assets/.git",
            "/a%00b",
            "/%ff",
        ] {
            assert_eq!(resolve(&web, hostile), StaticFile::Refused, "{hostile}");
        }
    }
}
