//! The system component: facts about this machine, which common developer tools are on it, and
//! how to install the missing ones.
//!
//! The operating system comes from `capbridge:host/system.platform`; programs are found by
//! looking through the `PATH` directories the policy grants (read-only); versions come from
//! `capbridge:host/system.program-version`, which runs only programs the policy lists.

wit_bindgen::generate!({ world: "system", generate_all });

use capbridge::host::system as host;

/// At most this many names per `locate` call.
const MAX_NAMES: usize = 64;
/// The longest name `locate` accepts, in characters.
const MAX_NAME_CHARS: usize = 64;

/// The package managers recipes use, in order of preference, each with the program names that
/// show it is present.
const MANAGERS: &[(&str, &[&str])] = &[
    ("apt", &["apt-get", "apt"]),
    ("dnf", &["dnf"]),
    ("pacman", &["pacman"]),
    ("zypper", &["zypper"]),
    ("apk", &["apk"]),
    ("brew", &["brew"]),
    ("winget", &["winget"]),
];

/// The operating system each manager installs for (`std::env::consts::OS` names).
fn manager_os(manager: &str) -> &'static str {
    match manager {
        "brew" => "macos",
        "winget" => "windows",
        _ => "linux",
    }
}

/// How one tool is packaged: the package name for each manager (`None`: the manager has no
/// package for it).
struct Entry {
    name: &'static str,
    description: &'static str,
    apt: &'static str,
    dnf: &'static str,
    pacman: &'static str,
    zypper: &'static str,
    apk: &'static str,
    brew: Option<&'static str>,
    winget: Option<&'static str>,
}

/// The catalogue: common developer tools, by program name. `policy/system.toml` lists the same
/// names in `grants.system.programs`.
const CATALOGUE: &[Entry] = &[
    Entry {
        name: "git",
        description: "Git, the distributed version control system",
        apt: "git",
        dnf: "git",
        pacman: "git",
        zypper: "git",
        apk: "git",
        brew: Some("git"),
        winget: Some("Git.Git"),
    },
    Entry {
        name: "curl",
        description: "curl, transfers data from or to URLs",
        apt: "curl",
        dnf: "curl",
        pacman: "curl",
        zypper: "curl",
        apk: "curl",
        brew: Some("curl"),
        winget: Some("cURL.cURL"),
    },
    Entry {
        name: "wget",
        description: "GNU Wget, downloads files over HTTP, HTTPS and FTP",
        apt: "wget",
        dnf: "wget",
        pacman: "wget",
        zypper: "wget",
        apk: "wget",
        brew: Some("wget"),
        winget: Some("JernejSimoncic.Wget"),
    },
    Entry {
        name: "jq",
        description: "jq, a command-line JSON processor",
        apt: "jq",
        dnf: "jq",
        pacman: "jq",
        zypper: "jq",
        apk: "jq",
        brew: Some("jq"),
        winget: Some("jqlang.jq"),
    },
    Entry {
        name: "make",
        description: "GNU Make, runs the build steps of a Makefile",
        apt: "make",
        dnf: "make",
        pacman: "make",
        zypper: "make",
        apk: "make",
        brew: Some("make"),
        winget: Some("GnuWin32.Make"),
    },
    Entry {
        name: "gcc",
        description: "GCC, the GNU C compiler",
        apt: "gcc",
        dnf: "gcc",
        pacman: "gcc",
        zypper: "gcc",
        apk: "gcc",
        brew: Some("gcc"),
        winget: None,
    },
    Entry {
        name: "python3",
        description: "Python 3, the programming language",
        apt: "python3",
        dnf: "python3",
        pacman: "python",
        zypper: "python3",
        apk: "python3",
        brew: Some("python"),
        winget: Some("Python.Python.3.12"),
    },
    Entry {
        name: "pip3",
        description: "pip, the Python package installer",
        apt: "python3-pip",
        dnf: "python3-pip",
        pacman: "python-pip",
        zypper: "python3-pip",
        apk: "py3-pip",
        brew: Some("python"),
        winget: Some("Python.Python.3.12"),
    },
    Entry {
        name: "node",
        description: "Node.js, the JavaScript runtime",
        apt: "nodejs",
        dnf: "nodejs",
        pacman: "nodejs",
        zypper: "nodejs-default",
        apk: "nodejs",
        brew: Some("node"),
        winget: Some("OpenJS.NodeJS.LTS"),
    },
    Entry {
        name: "npm",
        description: "npm, the Node.js package manager",
        apt: "npm",
        dnf: "npm",
        pacman: "npm",
        zypper: "npm-default",
        apk: "npm",
        brew: Some("node"),
        winget: Some("OpenJS.NodeJS.LTS"),
    },
    Entry {
        name: "cargo",
        description: "Cargo, the Rust build tool and package manager",
        apt: "cargo",
        dnf: "cargo",
        pacman: "rust",
        zypper: "cargo",
        apk: "cargo",
        brew: Some("rust"),
        winget: Some("Rustlang.Rustup"),
    },
    Entry {
        name: "rustc",
        description: "rustc, the Rust compiler",
        apt: "rustc",
        dnf: "rust",
        pacman: "rust",
        zypper: "rust",
        apk: "rust",
        brew: Some("rust"),
        winget: Some("Rustlang.Rustup"),
    },
    Entry {
        name: "go",
        description: "Go, the programming language and its tools",
        apt: "golang-go",
        dnf: "golang",
        pacman: "go",
        zypper: "go",
        apk: "go",
        brew: Some("go"),
        winget: Some("GoLang.Go"),
    },
    Entry {
        name: "java",
        description: "Java, the OpenJDK runtime and development kit",
        apt: "default-jdk",
        dnf: "java-latest-openjdk",
        pacman: "jdk-openjdk",
        zypper: "java-21-openjdk",
        apk: "openjdk21",
        brew: Some("openjdk"),
        winget: Some("EclipseAdoptium.Temurin.21.JDK"),
    },
    Entry {
        name: "docker",
        description: "Docker, builds and runs containers",
        apt: "docker.io",
        dnf: "moby-engine",
        pacman: "docker",
        zypper: "docker",
        apk: "docker",
        brew: Some("docker"),
        winget: Some("Docker.DockerDesktop"),
    },
    Entry {
        name: "ffmpeg",
        description: "FFmpeg, records, converts and streams audio and video",
        apt: "ffmpeg",
        dnf: "ffmpeg-free",
        pacman: "ffmpeg",
        zypper: "ffmpeg",
        apk: "ffmpeg",
        brew: Some("ffmpeg"),
        winget: Some("Gyan.FFmpeg"),
    },
    Entry {
        name: "sqlite3",
        description: "SQLite, the command-line shell for SQLite databases",
        apt: "sqlite3",
        dnf: "sqlite",
        pacman: "sqlite",
        zypper: "sqlite3",
        apk: "sqlite",
        brew: Some("sqlite"),
        winget: Some("SQLite.SQLite"),
    },
    Entry {
        name: "unzip",
        description: "UnZip, extracts ZIP archives",
        apt: "unzip",
        dnf: "unzip",
        pacman: "unzip",
        zypper: "unzip",
        apk: "unzip",
        brew: Some("unzip"),
        winget: Some("GnuWin32.UnZip"),
    },
    Entry {
        name: "zip",
        description: "Zip, creates ZIP archives",
        apt: "zip",
        dnf: "zip",
        pacman: "zip",
        zypper: "zip",
        apk: "zip",
        brew: Some("zip"),
        winget: Some("GnuWin32.Zip"),
    },
    Entry {
        name: "rg",
        description: "ripgrep, searches file contents recursively",
        apt: "ripgrep",
        dnf: "ripgrep",
        pacman: "ripgrep",
        zypper: "ripgrep",
        apk: "ripgrep",
        brew: Some("ripgrep"),
        winget: Some("BurntSushi.ripgrep.MSVC"),
    },
];

impl Entry {
    /// The package for `manager`, if it has one.
    fn package(&self, manager: &str) -> Option<&'static str> {
        match manager {
            "apt" => Some(self.apt),
            "dnf" => Some(self.dnf),
            "pacman" => Some(self.pacman),
            "zypper" => Some(self.zypper),
            "apk" => Some(self.apk),
            "brew" => self.brew,
            "winget" => self.winget,
            _ => None,
        }
    }

    /// The recipe that installs this tool with `manager`, if it has a package for it.
    fn recipe(&self, manager: &str) -> Option<Recipe> {
        let package = self.package(manager)?;
        let (command, needs_root): (&[&str], bool) = match manager {
            "apt" => (&["apt-get", "install", "-y", package], true),
            "dnf" => (&["dnf", "install", "-y", package], true),
            "pacman" => (&["pacman", "-S", "--needed", "--noconfirm", package], true),
            "zypper" => (&["zypper", "--non-interactive", "install", package], true),
            "apk" => (&["apk", "add", package], true),
            // Docker on macOS is Docker Desktop, a cask.
            "brew" if self.name == "docker" => (&["brew", "install", "--cask", package], false),
            "brew" => (&["brew", "install", package], false),
            "winget" => (&["winget", "install", "--exact", "--id", package], false),
            _ => return None,
        };
        Some(Recipe {
            tool: self.name.to_string(),
            os: manager_os(manager).to_string(),
            manager: manager.to_string(),
            package: package.to_string(),
            command: command.iter().map(|s| s.to_string()).collect(),
            needs_root,
        })
    }
}

struct System;

impl Guest for System {
    fn info() -> SystemInfo {
        let platform = host::platform();
        SystemInfo {
            os: platform.os,
            os_name: platform.os_name,
            os_version: platform.os_version,
            arch: platform.arch,
            kernel: platform.kernel,
            shell: platform.shell,
            package_managers: present_managers().into_iter().map(str::to_string).collect(),
        }
    }

    fn tools() -> Vec<Tool> {
        let dirs = path_dirs();
        CATALOGUE
            .iter()
            .map(|entry| {
                let path = find(&dirs, entry.name).into_iter().next();
                let version = path
                    .as_deref()
                    .and_then(|p| host::program_version(p).ok())
                    .and_then(|line| version_token(&line));
                Tool {
                    name: entry.name.to_string(),
                    description: entry.description.to_string(),
                    installed: path.is_some(),
                    path,
                    version,
                }
            })
            .collect()
    }

    fn locate(names: Vec<String>) -> Result<Vec<Located>, Error> {
        if names.len() > MAX_NAMES {
            return Err(Error::InvalidArgument(format!(
                "`names` has {} names; at most {MAX_NAMES} are allowed",
                names.len()
            )));
        }
        for (i, name) in names.iter().enumerate() {
            check_name(name)
                .map_err(|why| Error::InvalidArgument(format!("`names[{i}]` {name:?}: {why}")))?;
        }
        let dirs = path_dirs();
        Ok(names
            .into_iter()
            .map(|name| {
                let paths = find(&dirs, &name);
                Located {
                    found: !paths.is_empty(),
                    name,
                    paths,
                }
            })
            .collect())
    }

    fn recipes() -> Vec<Recipe> {
        CATALOGUE
            .iter()
            .flat_map(|entry| {
                MANAGERS
                    .iter()
                    .filter_map(|(manager, _)| entry.recipe(manager))
            })
            .collect()
    }

    fn resolve(tool: String) -> Result<Recipe, Error> {
        let entry = CATALOGUE.iter().find(|e| e.name == tool).ok_or_else(|| {
            Error::NotFound(format!(
                "no recipe for {tool:?}: it is not one of the tools this component knows"
            ))
        })?;
        let os = host::platform().os;
        let present = present_managers();
        present
            .iter()
            .filter(|manager| manager_os(manager) == os)
            .find_map(|manager| entry.recipe(manager))
            .ok_or_else(|| {
                let found = if present.is_empty() {
                    "none was found".to_string()
                } else {
                    format!("found: {}", present.join(", "))
                };
                Error::NotFound(format!(
                    "no recipe for {tool:?} on {os} with a package manager present ({found})"
                ))
            })
    }
}

/// A `locate` name: 1 to 64 characters of `[A-Za-z0-9._+-]`, not `.` or `..`.
fn check_name(name: &str) -> Result<(), String> {
    let chars = name.chars().count();
    if chars == 0 {
        return Err("is empty".into());
    }
    if chars > MAX_NAME_CHARS {
        return Err(format!(
            "is {chars} characters; at most {MAX_NAME_CHARS} are allowed"
        ));
    }
    if name == "." || name == ".." {
        return Err("is not a file name".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-')))
    {
        return Err(format!(
            "{c:?} is not allowed (use letters, digits, '.', '_', '+' and '-')"
        ));
    }
    Ok(())
}

/// The absolute directories of `PATH`, in order, each once. Directories the policy does not
/// grant are in the list but hold nothing this component can see.
fn path_dirs() -> Vec<String> {
    let path = std::env::var("PATH").unwrap_or_default();
    let mut dirs: Vec<String> = Vec::new();
    for dir in path.split(':') {
        let trimmed = dir.trim_end_matches('/');
        let dir = if trimmed.is_empty() && dir.starts_with('/') {
            "/"
        } else {
            trimmed
        };
        if dir.starts_with('/') && !dirs.iter().any(|d| d == dir) {
            dirs.push(dir.to_string());
        }
    }
    dirs
}

/// Every program named `name` in `dirs`, in order: a regular file, or a symbolic link. A link
/// is followed as far as the sandbox allows; one leading out of the granted directories
/// (`/usr/bin/java` → `/etc/alternatives/java`) cannot be checked from here, and counts as the
/// program the package manager installed under that name.
fn find(dirs: &[String], name: &str) -> Vec<String> {
    dirs.iter()
        .map(|dir| {
            if dir == "/" {
                format!("/{name}")
            } else {
                format!("{dir}/{name}")
            }
        })
        .filter(|path| match std::fs::metadata(path) {
            // Followed: it must lead to a file (`/usr/bin/X11 -> .` is no program).
            Ok(meta) => meta.is_file(),
            // Not followable inside the sandbox: a link still names an installed program.
            Err(_) => std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()),
        })
        .collect()
}

/// The package managers found on `PATH`, in order of preference.
fn present_managers() -> Vec<&'static str> {
    let dirs = path_dirs();
    MANAGERS
        .iter()
        .filter(|(_, programs)| programs.iter().any(|p| !find(&dirs, p).is_empty()))
        .map(|(manager, _)| *manager)
        .collect()
}

/// The first version-like token of a `--version` line: digits, a dot, digits, and the rest of
/// the token (`git version 2.39.2` → `2.39.2`, `v20.11.1` → `20.11.1`, `jq-1.7.1` → `1.7.1`).
fn version_token(line: &str) -> Option<String> {
    let bytes = line.as_bytes();
    let is_token_byte =
        |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-' | b'~');
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() && (i == 0 || !bytes[i - 1].is_ascii_digit()) {
            let mut j = i;
            while j < bytes.len() && bytes[j].is_ascii_digit() {
                j += 1;
            }
            if j + 1 < bytes.len() && bytes[j] == b'.' && bytes[j + 1].is_ascii_digit() {
                let mut end = j + 1;
                while end < bytes.len() && is_token_byte(bytes[end]) {
                    end += 1;
                }
                let token = line[i..end].trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
                return Some(token.to_string());
            }
            i = j;
        } else {
            i += 1;
        }
    }
    None
}

export!(System);
