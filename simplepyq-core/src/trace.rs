//! The trace context a task carries from the process that enqueued it to the one that
//! runs it: a W3C Trace Context `traceparent` (<https://www.w3.org/TR/trace-context/>), kept
//! as its header's text. The facade's `opentelemetry` feature writes it at enqueue and
//! makes the handler's span its child; every store keeps it as it is given.

/// The length of a version-00 `traceparent`: `00-` trace id (32) `-` span id (16) `-` flags.
pub const TRACEPARENT_LEN: usize = 55;

/// Checks that `value` is a `traceparent` of version 00 as W3C Trace Context writes it:
/// `00-{32 hex}-{16 hex}-{2 hex}`, lower case, with a trace id and a span id that are not all
/// zeros. Anything else is [`crate::Error::InvalidConfig`], naming what is wrong.
pub fn validate_traceparent(value: &str) -> crate::Result<()> {
    let problem = problem_of(value);
    match problem {
        None => Ok(()),
        Some(problem) => Err(crate::Error::InvalidConfig(format!(
            "invalid traceparent {:?}: {problem} (expected 00-<32 hex>-<16 hex>-<2 hex>, lower case)",
            value.chars().take(64).collect::<String>()
        ))),
    }
}

fn problem_of(value: &str) -> Option<&'static str> {
    if value.len() != TRACEPARENT_LEN {
        return Some("it is not 55 characters long");
    }
    let parts: Vec<&str> = value.split('-').collect();
    let [version, trace_id, span_id, flags] = parts[..] else {
        return Some("it does not have four parts separated by '-'");
    };
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let zeros = |s: &str| s.bytes().all(|b| b == b'0');
    if [version, trace_id, span_id, flags]
        .iter()
        .zip([2, 32, 16, 2])
        .any(|(part, len)| part.len() != len || !hex(part))
    {
        Some("its parts are not lower-case hex of 2, 32, 16 and 2 digits")
    } else if version != "00" {
        Some("only version 00 is known")
    } else if zeros(trace_id) {
        Some("its trace id is all zeros")
    } else if zeros(span_id) {
        Some("its span id is all zeros")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_w3c_example_is_a_traceparent() {
        assert!(validate_traceparent(GOOD).is_ok());
        assert!(
            validate_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").is_ok()
        );
    }

    #[test]
    fn anything_else_is_refused_with_its_reason() {
        for (value, reason) in [
            ("", "not 55 characters"),
            (&GOOD[..54], "not 55 characters"),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                "lower-case hex",
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
                "four parts",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e47-3600f067aa0ba902b7-01",
                "2, 32, 16 and 2",
            ),
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "version 00",
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "trace id is all zeros",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "span id is all zeros",
            ),
        ] {
            let Err(crate::Error::InvalidConfig(message)) = validate_traceparent(value) else {
                panic!("{value:?} was taken");
            };
            assert!(message.contains(reason), "{value:?}: {message}");
        }
    }
}
