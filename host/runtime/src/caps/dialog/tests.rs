//! The picks' logic against a fake chooser: no D-Bus, no wasm.

use std::sync::Mutex;

use super::*;

/// Answers every picker with the next prepared URI (`None`: the person cancelled).
struct FakeChooser {
    answers: Mutex<Vec<Option<String>>>,
    titles: Mutex<Vec<String>>,
}

impl FakeChooser {
    fn answering(answers: Vec<Option<String>>) -> Arc<Self> {
        Arc::new(Self {
            answers: Mutex::new(answers),
            titles: Mutex::new(Vec::new()),
        })
    }
}

impl Chooser for FakeChooser {
    fn choose<'a>(
        &'a self,
        _kind: PickKind,
        title: &'a str,
        _accept_label: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Option<String>>> {
        self.titles.lock().unwrap().push(title.to_string());
        let answer = self.answers.lock().unwrap().remove(0);
        Box::pin(async move { Ok(answer) })
    }
}

fn uri(path: &std::path::Path) -> Option<String> {
    Some(url::Url::from_file_path(path).unwrap().to_string())
}

#[tokio::test]
async fn a_pick_is_for_its_session_and_component_only_and_ends_with_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let picked = dir.path().canonicalize().unwrap();
    let chooser = FakeChooser::answering(vec![uri(&picked), None]);
    let dialog = DialogService::with_chooser(Some(chooser.clone()), OwnFiles::new());
    let pick = dialog
        .pick(
            PickKind::Directory,
            "files",
            Some(7),
            "for the report",
            Access::ReadWrite,
        )
        .await
        .unwrap()
        .expect("a pick");
    assert_eq!(pick.host_path, picked);
    assert_eq!(pick.guest_path, format!("/picked-{}", pick.id));
    // The host writes the title: who asks and what the pick grants.
    assert_eq!(
        chooser.titles.lock().unwrap()[0],
        "files asks for a folder it may read and change: for the report"
    );
    assert_eq!(dialog.picks_of(7, "files"), std::slice::from_ref(&pick));
    assert!(dialog.picks_of(8, "files").is_empty(), "another session");
    assert!(dialog.picks_of(7, "other").is_empty(), "another component");
    assert_eq!(
        Service::paths(&dialog, "files", 7),
        [GrantedPath {
            name: format!("picked-{}", pick.id),
            host_path: picked,
            access: Access::ReadWrite,
            origin: PathOrigin::PickedDirectory,
        }]
    );
    // Cancelled: nothing changes.
    let cancelled = dialog
        .pick(PickKind::Directory, "files", Some(7), "", Access::ReadOnly)
        .await
        .unwrap();
    assert_eq!(cancelled, None);
    assert_eq!(dialog.picks_of(7, "files").len(), 1);
    Service::end_session(&dialog, 8).await;
    assert_eq!(
        dialog.picks_of(7, "files").len(),
        1,
        "another session ended"
    );
    Service::end_session(&dialog, 7).await;
    assert!(dialog.picks_of(7, "files").is_empty());
}

#[tokio::test]
async fn picks_need_a_session_a_display_and_must_not_reach_capbridge_s_own_files() {
    let dir = tempfile::tempdir().unwrap();
    let headless = DialogService::with_chooser(None, OwnFiles::new());
    assert!(matches!(
        headless
            .pick(PickKind::Directory, "files", Some(1), "", Access::ReadOnly)
            .await,
        Err(GuestError::Unavailable(m)) if m.contains("without a display")
    ));
    let chooser = FakeChooser::answering(vec![uri(dir.path())]);
    let dialog = DialogService::with_chooser(Some(chooser), OwnFiles::new());
    assert!(matches!(
        dialog
            .pick(PickKind::Directory, "files", None, "", Access::ReadOnly)
            .await,
        Err(GuestError::Denied(_))
    ));
    // The person picks a folder that contains capbridge's policy directory: refused.
    let policy_dir = dir.path().join("policy");
    std::fs::create_dir(&policy_dir).unwrap();
    let own = OwnFiles::new().with_path("policy directory", &policy_dir);
    let chooser = FakeChooser::answering(vec![uri(dir.path())]);
    let dialog = DialogService::with_chooser(Some(chooser), own);
    match dialog
        .pick(PickKind::Directory, "files", Some(1), "", Access::ReadWrite)
        .await
    {
        Err(GuestError::Denied(m)) => assert!(m.contains("policy directory"), "{m}"),
        other => panic!("expected a denial, got {other:?}"),
    }
    assert!(dialog.picks_of(1, "files").is_empty());
}

#[tokio::test]
async fn a_picked_file_is_read_and_replaced_only_as_granted() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().canonicalize().unwrap().join("doc.txt");
    std::fs::write(&file, "old").unwrap();
    let chooser = FakeChooser::answering(vec![uri(&file), uri(&file)]);
    let dialog = DialogService::with_chooser(Some(chooser), OwnFiles::new());
    let rw = dialog
        .pick(PickKind::File, "files", Some(1), "", Access::ReadWrite)
        .await
        .unwrap()
        .unwrap();
    let ro = dialog
        .pick(PickKind::File, "files", Some(1), "", Access::ReadOnly)
        .await
        .unwrap()
        .unwrap();
    let id = rw.id.to_string();
    assert_eq!(
        dialog
            .read_picked(Some(1), "files", &id, 100)
            .await
            .unwrap(),
        b"old"
    );
    assert!(matches!(
        dialog.read_picked(Some(1), "files", &id, 2).await,
        Err(GuestError::TooLarge(_))
    ));
    dialog
        .write_picked(Some(1), "files", &id, b"new".to_vec())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), b"new");
    assert!(matches!(
        dialog
            .write_picked(Some(1), "files", &ro.id.to_string(), b"x".to_vec())
            .await,
        Err(GuestError::Denied(_))
    ));
    assert!(matches!(
        dialog.read_picked(Some(2), "files", &id, 100).await,
        Err(GuestError::NotFound(_))
    ));
    assert_eq!(std::fs::read(&file).unwrap(), b"new");
}
