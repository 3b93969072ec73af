//! The running kernel's version, for features no probe can see.

use std::sync::OnceLock;

/// This kernel's (major, minor), read once; `None` if it cannot be read or parsed.
pub(crate) fn version() -> Option<(u32, u32)> {
    static VERSION: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *VERSION.get_or_init(|| {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
        parse(&release)
    })
}

/// The (major, minor) of a release string ("6.18.44-fc", "5.4.0-150-generic").
pub(crate) fn parse(release: &str) -> Option<(u32, u32)> {
    let mut numbers = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().ok());
    Some((numbers.next().flatten()?, numbers.next().flatten()?))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn releases_parse_to_their_major_and_minor() {
        assert_eq!(parse("6.18.44-fc-v1272"), Some((6, 18)));
        assert_eq!(parse("5.10.209-1\n"), Some((5, 10)));
        assert_eq!(parse("4.19.0-26-amd64"), Some((4, 19)));
        assert_eq!(parse("6.1"), Some((6, 1)));
        assert_eq!(parse("5"), None, "no minor: not assumed");
        assert_eq!(parse("abc"), None);
        assert_eq!(parse(""), None);
    }
}
