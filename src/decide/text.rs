//! Wording shared by the messages gpupool writes.

/// "a, b, c and 4 more": node lists in messages stay readable at 5,000 nodes.
pub fn name_list(names: &[String], max: usize) -> String {
    if names.len() <= max {
        names.join(", ")
    } else {
        format!("{} and {} more", names[..max].join(", "), names.len() - max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_lists_are_bounded() {
        let names: Vec<String> = (0..5).map(|i| format!("n{i}")).collect();
        assert_eq!(name_list(&names, 10), "n0, n1, n2, n3, n4");
        assert_eq!(name_list(&names, 2), "n0, n1 and 3 more");
    }
}
