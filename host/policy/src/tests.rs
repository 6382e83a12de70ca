use super::*;

/// The file types serialise back to the same TOML keys they read.
#[test]
fn file_types_round_trip_through_toml() {
    let file: PolicyFile = toml::from_str(
        "version = 1\n[grants]\nevents = [\"a.*\"]\n[[grants.directories]]\nhost = \"/a\"\nguest = \"/a\"\naccess = \"read-write\"\n",
    )
    .unwrap();
    let text = toml::to_string(&file).unwrap();
    assert!(text.contains("access = \"read-write\""), "{text}");
    assert!(text.contains("deadline-ms = 30000"), "{text}");
    let again: PolicyFile = toml::from_str(&text).unwrap();
    assert_eq!(again, file);
}
