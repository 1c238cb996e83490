//! Plain-text report tables: columns padded to their widest cell, text columns left-aligned and
//! numbers right-aligned, two spaces apart. `bcae eval` and both `bcae compare` tables print
//! through it.

/// The lines of a table: the header line, then one line per row (trailing spaces trimmed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub header: String,
    pub rows: Vec<String>,
    /// The full width of a line before trimming (for a rule under the header).
    pub width: usize,
}

/// Align `rows` under `header`; the columns whose index is in `left` are left-aligned.
/// Rows shorter than the header leave their last columns empty.
pub fn align(header: &[&str], rows: &[Vec<String>], left: &[usize]) -> Table {
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c).map(String::len))
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &mut dyn Iterator<Item = &str>| -> String {
        let mut s = String::new();
        for (c, w) in widths.iter().enumerate() {
            let cell = cells.next().unwrap_or("");
            if c > 0 {
                s.push_str("  ");
            }
            if left.contains(&c) {
                s.push_str(&format!("{cell:<w$}"));
            } else {
                s.push_str(&format!("{cell:>w$}"));
            }
        }
        s.trim_end().to_string()
    };
    Table {
        header: line(&mut header.iter().copied()),
        rows: rows
            .iter()
            .map(|r| line(&mut r.iter().map(String::as_str)))
            .collect(),
        width: widths.iter().sum::<usize>() + 2 * widths.len().saturating_sub(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_take_the_widest_cell_and_align_by_kind() {
        let t = align(
            &["codec", "MAE"],
            &[
                vec!["sparse".into(), "0.1".into()],
                vec!["z".into(), "12.25".into()],
            ],
            &[0],
        );
        assert_eq!(t.header, "codec     MAE");
        assert_eq!(t.rows, ["sparse    0.1", "z       12.25"]);
        assert_eq!(t.width, 6 + 2 + 5);
    }

    #[test]
    fn short_rows_leave_their_last_cells_empty() {
        let t = align(&["a", "b"], &[vec!["x".into()]], &[0, 1]);
        assert_eq!(t.rows, ["x"]);
    }
}
