//! Remote path arithmetic on `/`-separated strings: last component,
//! parent, and the ancestors of a path.

pub(crate) fn file_name(path: &str) -> &str {
    let trimmed = path.trim_end_matches('/');
    trimmed.rsplit('/').next().unwrap_or(trimmed)
}

pub(crate) fn parent_dir(path: &str) -> &str {
    match path.trim_end_matches('/').rsplit_once('/') {
        Some(("", _)) => "/",
        Some((parent, _)) => parent,
        None => ".",
    }
}

/// `/a/b/c` → `["/a", "/a/b", "/a/b/c"]`; relative paths stay relative.
pub(crate) fn path_prefixes(path: &str) -> Vec<String> {
    let absolute = path.starts_with('/');
    let mut current = String::new();
    let mut prefixes = Vec::new();
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if absolute || !current.is_empty() {
            current.push('/');
        }
        current.push_str(part);
        prefixes.push(current.clone());
    }
    prefixes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert_eq!(path_prefixes("/a//b/c/"), ["/a", "/a/b", "/a/b/c"]);
        assert_eq!(path_prefixes("a/./b"), ["a", "a/b"]);
        assert!(path_prefixes("/").is_empty());
    }

    #[test]
    fn names_and_parents() {
        assert_eq!(file_name("/a/b.txt"), "b.txt");
        assert_eq!(file_name("/a/dir/"), "dir");
        assert_eq!(parent_dir("/a/b"), "/a");
        assert_eq!(parent_dir("/b"), "/");
        assert_eq!(parent_dir("b"), ".");
    }
}
