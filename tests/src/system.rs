//! What the test suite needs of the machine beyond Rust, installed when missing: the suite
//! is one command on a fresh Debian machine. Packages come from Debian's archive with
//! `apt-get`, as root or through `sudo -n`; where neither can, the caller says what to install.

use std::process::Command;

/// Installs Debian's `packages`, once per machine at a time (test binaries run at once take
/// turns on a lock file). Returns why it could not.
pub fn install(packages: &[&str]) -> Result<(), String> {
    let sudo: &[&str] = if crate::postgres::is_root() {
        &[]
    } else if Command::new("sudo")
        .args(["-n", "true"])
        .status()
        .is_ok_and(|s| s.success())
    {
        &["sudo", "-n"]
    } else {
        return Err(format!(
            "not root, and no password-less sudo: install them with `apt-get install {}`",
            packages.join(" ")
        ));
    };
    if Command::new("apt-get").arg("--version").output().is_err() {
        return Err(format!(
            "no apt-get on this machine: install {} with its package manager",
            packages.join(", ")
        ));
    }
    let script = format!(
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {} >/dev/null",
        packages.join(" ")
    );
    eprintln!("installing {} (apt-get) for the tests", packages.join(", "));
    let mut command = Command::new(sudo.first().copied().unwrap_or("flock"));
    if !sudo.is_empty() {
        command.args(&sudo[1..]).arg("flock");
    }
    let status = command
        .args(["/tmp/simplepyq-test-apt.lock", "sh", "-c", &script])
        .status()
        .map_err(|e| format!("could not run apt-get: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "apt-get install {} failed ({status})",
            packages.join(" ")
        ))
    }
}
