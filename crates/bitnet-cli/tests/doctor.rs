//! `bitnet doctor --quick` end to end: it runs, every available fast kernel
//! passes its self-test, and every section is printed.

use std::process::Command;

#[test]
fn doctor_quick_reports_every_section() {
    let out = Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .args(["doctor", "--quick", "--threads", "1"])
        .output()
        .expect("run bitnet");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for section in [
        "CPU",
        "Dispatch",
        "Self-test",
        "Memory read bandwidth",
        "Ternary GEMV",
    ] {
        assert!(text.contains(section), "missing {section}:\n{text}");
    }
    assert!(text.contains("portable     PASS"), "{text}");
    assert!(!text.contains("FAIL"), "{text}");
    for shape in ["2560x2560", "640x2560", "6912x2560", "2560x6912"] {
        assert!(text.contains(shape), "missing {shape}:\n{text}");
    }
}

#[test]
fn doctor_rejects_zero_threads() {
    let out = Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .args(["doctor", "--quick", "--threads", "0"])
        .output()
        .expect("run bitnet");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 1"));
}
