//! The trail and the verifier together: logs written by [`AuditTrail`],
//! tampered with as an attacker would, and judged by [`verify`].

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use super::{
    AuditRecord, AuditTrail,
    chain::{GENESIS, Head, line_hash},
    config::AuditConfig,
    files::log_files,
    keys,
    record::{AuditObject, AuditProcess},
    verify::{ProblemKind, Report, VerifyOptions, verify},
};

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(label: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "baton-audit-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn log(&self) -> PathBuf {
        self.0.join("log/audit.jsonl")
    }

    fn config(&self) -> AuditConfig {
        let mut config = AuditConfig {
            key_file: self.0.join("audit.key"),
            state_dir: self.0.join("state"),
            ..AuditConfig::default()
        };
        config.rotation.max_bytes = 2500;
        config.checkpoints.every_records = 5;
        config
    }

    fn options(&self) -> VerifyOptions {
        VerifyOptions {
            key: keys::load(&self.0.join("audit.key"))
                .unwrap()
                .verifying_key(),
            head: None,
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `count` records (checkpoints come on top) and returns the head
/// just before the trail is closed, and the files.
fn write_log(scratch: &Scratch, count: usize) -> (Head, Vec<PathBuf>) {
    let mut trail = AuditTrail::open(&scratch.log(), &scratch.config()).unwrap();
    for i in 0..count {
        let mut record = AuditRecord::lifecycle("h", "daemon", format!("event number {i}"));
        trail.write(&mut record).unwrap();
    }
    let head = trail.head().unwrap();
    drop(trail);
    (head, log_files(&scratch.log()).unwrap())
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

fn seq_of(line: &str) -> u64 {
    serde_json::from_str::<serde_json::Value>(line).unwrap()["seq"]
        .as_u64()
        .unwrap()
}

fn problem_of(report: &Report) -> &super::verify::Problem {
    report
        .problem
        .as_ref()
        .unwrap_or_else(|| panic!("no problem found: {:#?}", report.lines(false)))
}

#[test]
fn the_chain_links_every_line_and_survives_a_restart() {
    let scratch = Scratch::new("chain");
    let mut config = scratch.config();
    config.rotation.max_bytes = 0;
    config.checkpoints.every_records = 0;
    let mut trail = AuditTrail::open(&scratch.log(), &config).unwrap();
    for i in 0..3 {
        trail
            .write(&mut AuditRecord::lifecycle("h", "daemon", format!("{i}")))
            .unwrap();
    }
    drop(trail);
    let mut trail = AuditTrail::open(&scratch.log(), &config).unwrap();
    let mut record = AuditRecord::lifecycle("h", "daemon", "again".into());
    trail.write(&mut record).unwrap();
    assert_eq!(
        record.seq, 5,
        "seq 4 is the closing checkpoint of the first run"
    );
    drop(trail);
    let lines = lines(&scratch.log());
    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["prev_hash"], GENESIS);
    assert_eq!(first["seq"], 1);
    for pair in lines.windows(2) {
        let next: serde_json::Value = serde_json::from_str(&pair[1]).unwrap();
        assert_eq!(next["prev_hash"], line_hash(pair[0].as_bytes()));
        assert_eq!(next["seq"], seq_of(&pair[0]) + 1);
    }
    let mode = std::fs::metadata(scratch.log())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn an_untouched_log_spanning_rotations_verifies() {
    let scratch = Scratch::new("intact");
    let (head, files) = write_log(&scratch, 40);
    assert!(files.len() >= 3, "rotated: {files:?}");
    // Given in any order (a shell glob puts the active file first).
    let mut shuffled = files.clone();
    shuffled.reverse();
    let report = verify(&shuffled, &scratch.options()).unwrap();
    assert!(report.intact(), "{:#?}", report.lines(false));
    assert_eq!(report.files, files);
    assert_eq!(report.first_seq, Some(1));
    assert!(report.checkpoints >= 8);
    // Everything is signed: the last record is a checkpoint of the one
    // before it.
    assert_eq!(report.trusted.as_ref().unwrap().seq, head.seq - 1);
    assert_eq!(report.unproven, 0);
    let mut options = scratch.options();
    options.head = Some(head);
    assert!(verify(&files, &options).unwrap().intact());
}

/// Finds the file and line index of record `seq`.
fn find(files: &[PathBuf], seq: u64) -> (PathBuf, usize) {
    for file in files {
        if let Some(i) = lines(file).iter().position(|l| seq_of(l) == seq) {
            return (file.clone(), i);
        }
    }
    panic!("no record {seq}");
}

#[test]
fn one_edited_byte_is_named() {
    let scratch = Scratch::new("edit");
    let (_, files) = write_log(&scratch, 40);
    let (file, index) = find(&files, 17);
    let mut content = lines(&file);
    content[index] = content[index].replace("event number", "event numbez");
    write_lines(&file, &content);
    let report = verify(&files, &scratch.options()).unwrap();
    let problem = problem_of(&report);
    assert_eq!(problem.kind, ProblemKind::Edited);
    assert_eq!(problem.seq, Some(17));
    assert_eq!(problem.location.file, file);
    assert_eq!(problem.location.line, index as u64 + 1);
    assert!(
        problem.to_string().contains(": seq 17: record was edited"),
        "{problem}"
    );
}

#[test]
fn an_edited_prev_hash_names_its_own_record() {
    let scratch = Scratch::new("edit-link");
    let (_, files) = write_log(&scratch, 20);
    let (file, index) = find(&files, 9);
    let mut content = lines(&file);
    let mut value: serde_json::Value = serde_json::from_str(&content[index]).unwrap();
    value["prev_hash"] = serde_json::Value::String("1".repeat(64));
    content[index] = serde_json::to_string(&value).unwrap();
    write_lines(&file, &content);
    let report = verify(&files, &scratch.options()).unwrap();
    let problem = problem_of(&report);
    assert_eq!((problem.kind, problem.seq), (ProblemKind::Edited, Some(9)));
}

#[test]
fn a_deleted_record_is_named() {
    let scratch = Scratch::new("delete");
    let (_, files) = write_log(&scratch, 40);
    let (file, index) = find(&files, 22);
    let mut content = lines(&file);
    content.remove(index);
    write_lines(&file, &content);
    let report = verify(&files, &scratch.options()).unwrap();
    let problem = problem_of(&report);
    assert_eq!(problem.kind, ProblemKind::Deleted);
    assert_eq!(problem.seq, Some(23), "named at the record after the gap");
    assert!(
        problem.message.contains("record seq 22 is missing"),
        "{problem}"
    );
}

#[test]
fn two_swapped_records_are_named() {
    let scratch = Scratch::new("swap");
    let (_, files) = write_log(&scratch, 40);
    // Two neighbours in one file, past the first checkpoint.
    let (file, index, seq) = files
        .iter()
        .find_map(|file| {
            let content = lines(file);
            (0..content.len().saturating_sub(1)).find_map(|i| {
                let seq = seq_of(&content[i]);
                (seq > 6
                    && !content[i].contains("checkpoint")
                    && !content[i + 1].contains("checkpoint"))
                .then(|| (file.clone(), i, seq))
            })
        })
        .unwrap();
    let mut content = lines(&file);
    content.swap(index, index + 1);
    write_lines(&file, &content);
    let report = verify(&files, &scratch.options()).unwrap();
    let problem = problem_of(&report);
    assert_eq!(problem.kind, ProblemKind::Reordered);
    assert_eq!(problem.seq, Some(seq + 1));
    assert_eq!(problem.location.line, index as u64 + 1);
    assert!(
        problem.message.contains(&format!("comes before seq {seq}")),
        "{problem}"
    );
}

#[test]
fn a_truncated_tail_is_found_against_the_head_only() {
    let scratch = Scratch::new("truncate");
    let mut config = scratch.config();
    config.rotation.max_bytes = 0;
    config.checkpoints.every_records = 10;
    let mut trail = AuditTrail::open(&scratch.log(), &config).unwrap();
    for i in 0..14 {
        trail
            .write(&mut AuditRecord::lifecycle("h", "daemon", format!("{i}")))
            .unwrap();
    }
    let head = trail.head().unwrap();
    // Crash: no closing checkpoint.
    std::mem::forget(trail);
    let files = vec![scratch.log()];
    let mut content = lines(&scratch.log());
    content.truncate(content.len() - 3);
    write_lines(&scratch.log(), &content);
    // Offline, nothing shows: the records after the checkpoint are not
    // signed, and the report says so.
    let report = verify(&files, &scratch.options()).unwrap();
    assert!(report.intact());
    assert_eq!(report.trusted.as_ref().unwrap().seq, 10);
    assert!(report.unproven > 0);
    assert!(
        report
            .lines(false)
            .iter()
            .any(|l| l.contains("their deletion or rewriting cannot be detected")),
        "{:#?}",
        report.lines(false)
    );
    let mut options = scratch.options();
    options.head = Some(head.clone());
    let report = verify(&files, &options).unwrap();
    let problem = problem_of(&report);
    assert_eq!(problem.kind, ProblemKind::Truncated);
    assert_eq!(problem.seq, Some(head.seq - 3));
    assert!(
        problem.message.contains(&format!(
            "records seq {} to {} (3 records) are missing",
            head.seq - 2,
            head.seq
        )),
        "{problem}"
    );
    assert!(problem.message.contains("last trusted checkpoint: seq 10"));
}

#[test]
fn a_checkpoint_signed_with_another_key_is_forged() {
    let scratch = Scratch::new("forge");
    let (_, files) = write_log(&scratch, 12);
    // The whole log rewritten and re-signed by someone else's key.
    let other = Scratch::new("forge-other");
    let (_, forged) = write_log(&other, 12);
    let report = verify(&forged, &scratch.options()).unwrap();
    let problem = problem_of(&report);
    assert_eq!((problem.kind, problem.seq), (ProblemKind::Forged, Some(6)));
    assert!(
        problem.message.contains("signed with another key"),
        "{problem}"
    );
    // Same key field, signature made with another key.
    let (file, index) = find(&files, 6);
    let mut content = lines(&file);
    let mut value: serde_json::Value = serde_json::from_str(&content[index]).unwrap();
    let other_key = keys::load(&other.0.join("audit.key")).unwrap();
    let checkpoint = &value["checkpoint"];
    let signature = keys::sign_checkpoint(
        &other_key,
        checkpoint["seq"].as_u64().unwrap(),
        checkpoint["hash"].as_str().unwrap(),
    );
    value["checkpoint"]["signature"] = signature.into();
    content[index] = serde_json::to_string(&value).unwrap();
    write_lines(&file, &content);
    let report = verify(&files, &scratch.options()).unwrap();
    let problem = problem_of(&report);
    assert_eq!((problem.kind, problem.seq), (ProblemKind::Forged, Some(6)));
    assert!(problem.message.contains("does not verify"), "{problem}");
}

#[test]
fn a_rewritten_chain_fails_at_the_next_checkpoint() {
    let scratch = Scratch::new("rechain");
    let (_, files) = write_log(&scratch, 12);
    // An attacker without the key edits seq 2 and recomputes every hash
    // after it, keeping the checkpoints' signed fields.
    let mut all: Vec<(PathBuf, Vec<String>)> =
        files.iter().map(|f| (f.clone(), lines(f))).collect();
    let mut previous_hash = String::new();
    for (_, content) in &mut all {
        for line in content.iter_mut() {
            let mut value: serde_json::Value = serde_json::from_str(line).unwrap();
            let seq = value["seq"].as_u64().unwrap();
            if seq == 2 {
                value["object"]["message"] = "nothing happened".into();
            }
            // Re-serializing changes every line's bytes, so every link
            // after the first is recomputed.
            if seq >= 2 {
                value["prev_hash"] = previous_hash.clone().into();
            }
            *line = serde_json::to_string(&value).unwrap();
            previous_hash = line_hash(line.as_bytes());
        }
    }
    for (file, content) in &all {
        write_lines(file, content);
    }
    let report = verify(&files, &scratch.options()).unwrap();
    let problem = problem_of(&report);
    assert_eq!((problem.kind, problem.seq), (ProblemKind::Forged, Some(6)));
    assert!(problem.message.contains("were rewritten"), "{problem}");
}

#[test]
fn a_torn_final_line_is_incomplete_not_tampering_and_the_chain_resumes() {
    let scratch = Scratch::new("torn");
    let config = scratch.config();
    let mut trail = AuditTrail::open(&scratch.log(), &config).unwrap();
    for i in 0..3 {
        trail
            .write(&mut AuditRecord::lifecycle("h", "daemon", format!("{i}")))
            .unwrap();
    }
    let head = trail.head().unwrap();
    // Killed mid-write: half a line, no newline, no closing checkpoint.
    std::mem::forget(trail);
    let mut text = std::fs::read_to_string(scratch.log()).unwrap();
    text.push_str(r#"{"schema":"baton.audit/v1","seq":4,"prev_ha"#);
    std::fs::write(scratch.log(), &text).unwrap();

    let report = verify(&[scratch.log()], &scratch.options()).unwrap();
    assert!(report.problem.is_none(), "{:#?}", report.lines(false));
    assert_eq!(report.incomplete.len(), 1);
    assert_eq!(report.incomplete[0].0.line, 4);
    let text = report.lines(false).join("\n");
    assert!(
        text.contains("audit.jsonl:4: incomplete final record"),
        "{text}"
    );
    assert!(text.contains("not tampering"), "{text}");
    assert!(!text.contains("TAMPERED"), "{text}");

    // Restart: the fragment stays the final line of its (rotated) file and
    // the chain resumes from the last complete record.
    let mut trail = AuditTrail::open(&scratch.log(), &config).unwrap();
    trail
        .write(&mut AuditRecord::lifecycle("h", "daemon", "after".into()))
        .unwrap();
    drop(trail);
    let files = log_files(&scratch.log()).unwrap();
    assert_eq!(files.len(), 2, "{files:?}");
    let resumed = lines(&scratch.log());
    let first: serde_json::Value = serde_json::from_str(&resumed[0]).unwrap();
    assert_eq!(first["seq"], head.seq + 1);
    assert_eq!(first["prev_hash"], head.hash);
    assert!(
        first["object"]["message"]
            .as_str()
            .unwrap()
            .contains("ended with an incomplete record"),
        "{first}"
    );
    let report = verify(&files, &scratch.options()).unwrap();
    assert!(report.problem.is_none(), "{:#?}", report.lines(false));
    assert_eq!(report.incomplete.len(), 1);
    assert_eq!(report.incomplete[0].0.file, files[0]);
}

#[test]
fn secrets_never_reach_the_file() {
    let scratch = Scratch::new("redact");
    let mut trail = AuditTrail::open(&scratch.log(), &scratch.config()).unwrap();
    let mut record = AuditRecord::lifecycle("h", "egress", "x".into());
    record.object = AuditObject::File {
        path: "/srv/app?token=tok-path-secret".into(),
        rights: vec!["read"],
        denied_rights: vec!["read"],
        truncated: false,
        anonymous: false,
        killed: false,
        by_object: false,
        disconnected: false,
        beyond_policy: false,
    };
    record.process = Some(AuditProcess {
        pid: 1,
        tid: 1,
        uid: 0,
        gid: 0,
        comm: "curl".into(),
        exe: Some("/usr/bin/curl".into()),
        cmdline: Some(
            [
                "curl",
                "-H",
                "Authorization: Bearer tok-bearer-secret",
                "https://bob:tok-url-secret@example.com/",
            ]
            .map(String::from)
            .to_vec(),
        ),
        cmdline_truncated: false,
        cgroup_id: 1,
        cgroup: None,
        agent_root_pid: 1,
        ancestors: Vec::new(),
        redacted: false,
    });
    trail.write(&mut record).unwrap();
    let hub = trail.hub();
    let (recent, _) = hub.subscribe(1);
    drop(trail);
    let text = std::fs::read_to_string(scratch.log()).unwrap();
    assert!(!text.contains("tok-"), "{text}");
    assert!(
        !recent[0].line.contains("tok-"),
        "the stream gets the redacted line"
    );
    assert!(text.contains("Authorization: Bearer [REDACTED]"), "{text}");
}

#[test]
fn an_unwritable_log_directory_is_a_clear_error() {
    let scratch = Scratch::new("unwritable");
    // Root writes anywhere permissions allow nothing; a file where the
    // directory should be stops it all the same.
    std::fs::write(scratch.0.join("log"), "").unwrap();
    let error = AuditTrail::open(&scratch.log(), &scratch.config())
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        error,
        format!(
            "cannot open audit log {}: {} is not a directory",
            scratch.log().display(),
            scratch.0.join("log").display()
        )
    );
    let error = AuditTrail::open(Path::new("/proc/baton/audit.jsonl"), &scratch.config())
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.starts_with("cannot open audit log /proc/baton/audit.jsonl: "),
        "{error}"
    );
}

#[test]
fn suppression_records_say_how_many_and_why() {
    let record = AuditRecord::suppressed("h", Some("demo"), 1200, "rate limit");
    let json = serde_json::to_value(&record).unwrap();
    assert_eq!(json["control"], "audit");
    assert_eq!(json["verdict"], "info");
    assert_eq!(json["agent"], "demo");
    assert_eq!(
        json["object"]["message"],
        "1200 events suppressed: rate limit"
    );
    assert_eq!(json["object"]["suppressed"], 1200);
    assert_eq!(json["object"]["reason"], "rate limit");
}

#[test]
fn checkpoints_come_every_n_records_and_on_tick() {
    let scratch = Scratch::new("checkpoints");
    let mut config = scratch.config();
    config.rotation.max_bytes = 0;
    config.checkpoints.every_records = 3;
    config.checkpoints.every_seconds = 1;
    let mut trail = AuditTrail::open(&scratch.log(), &config).unwrap();
    for i in 0..4 {
        trail
            .write(&mut AuditRecord::lifecycle("h", "daemon", format!("{i}")))
            .unwrap();
    }
    trail.tick().unwrap();
    assert_eq!(
        trail.head().unwrap().seq,
        5,
        "3 records, a checkpoint, 1 record"
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    trail.tick().unwrap();
    assert_eq!(
        trail.head().unwrap().seq,
        6,
        "the waiting record got signed"
    );
    trail.tick().unwrap();
    assert_eq!(trail.head().unwrap().seq, 6, "nothing new, no checkpoint");
    let content = lines(&scratch.log());
    let checkpoint: serde_json::Value = serde_json::from_str(&content[3]).unwrap();
    assert_eq!(checkpoint["control"], "audit");
    assert_eq!(checkpoint["checkpoint"]["seq"], 3);
    assert_eq!(
        checkpoint["checkpoint"]["hash"],
        line_hash(content[2].as_bytes())
    );
    assert_eq!(checkpoint["checkpoint"]["key"], trail.public_key());
}
