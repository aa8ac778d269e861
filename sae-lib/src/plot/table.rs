//! Result tables (training metrics, sweeps) as named columns: shown inline as HTML by the
//! notebooks, and turned into a polars `DataFrame` with the `polars` feature.
//!
//! The notebooks build sae-lib without polars: the Rust kernel analyses every crate a cell
//! depends on before the cell runs, and polars alone was about 40% of that work, paid again
//! by each new kernel.

use super::Html;

/// One column's values.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// Whole numbers (steps, counts).
    Int(Vec<u64>),
    /// Floats, shown to four significant digits.
    Float(Vec<f64>),
    /// Floats that some rows lack: an empty cell, a null in a `DataFrame`.
    MaybeFloat(Vec<Option<f64>>),
    /// Text, shown as it is.
    Text(Vec<String>),
}

impl Values {
    fn len(&self) -> usize {
        match self {
            Values::Int(v) => v.len(),
            Values::Float(v) => v.len(),
            Values::MaybeFloat(v) => v.len(),
            Values::Text(v) => v.len(),
        }
    }

    fn tail(&self, from: usize) -> Values {
        match self {
            Values::Int(v) => Values::Int(v[from.min(v.len())..].to_vec()),
            Values::Float(v) => Values::Float(v[from.min(v.len())..].to_vec()),
            Values::MaybeFloat(v) => Values::MaybeFloat(v[from.min(v.len())..].to_vec()),
            Values::Text(v) => Values::Text(v[from.min(v.len())..].to_vec()),
        }
    }

    fn cell(&self, row: usize) -> String {
        match self {
            Values::Int(v) => v.get(row).map(u64::to_string),
            Values::Float(v) => v.get(row).map(|&x| number(x)),
            Values::MaybeFloat(v) => v.get(row).map(|x| x.map(number).unwrap_or_default()),
            Values::Text(v) => v.get(row).cloned(),
        }
        .unwrap_or_default()
    }
}

/// Four significant digits, in plain notation where that stays short.
fn number(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return x.to_string();
    }
    let magnitude = x.abs().log10().floor() as i32;
    if (-3..5).contains(&magnitude) {
        format!("{x:.*}", (3 - magnitude).max(0) as usize)
    } else {
        format!("{x:.3e}")
    }
}

/// Named columns of equal length.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Table {
    /// `(name, values)` pairs in display order; a shorter column shows empty cells.
    pub columns: Vec<(String, Values)>,
}

impl Table {
    /// Adds a column.
    pub fn with(mut self, name: &str, values: Values) -> Self {
        self.columns.push((name.to_string(), values));
        self
    }

    /// The number of rows (that of the longest column).
    pub fn rows(&self) -> usize {
        self.columns.iter().map(|(_, v)| v.len()).max().unwrap_or(0)
    }

    /// The last `n` rows.
    pub fn tail(&self, n: usize) -> Table {
        let from = self.rows().saturating_sub(n);
        Table {
            columns: self
                .columns
                .iter()
                .map(|(name, v)| (name.clone(), v.tail(from)))
                .collect(),
        }
    }

    /// The rows as text, numbers to four significant digits.
    pub fn cells(&self) -> Vec<Vec<String>> {
        (0..self.rows())
            .map(|row| self.columns.iter().map(|(_, v)| v.cell(row)).collect())
            .collect()
    }

    /// An HTML table.
    pub fn html(&self) -> Html {
        let header: Vec<&str> = self.columns.iter().map(|(name, _)| name.as_str()).collect();
        Html::table(&header, self.cells())
    }

    /// Shown inline by evcxr when a cell evaluates to a table.
    pub fn evcxr_display(&self) {
        self.html().evcxr_display()
    }

    /// The table as a polars `DataFrame`.
    #[cfg(feature = "polars")]
    pub fn frame(&self) -> crate::Result<polars::prelude::DataFrame> {
        use polars::prelude::{Column, DataFrame};
        let columns = self
            .columns
            .iter()
            .map(|(name, v)| match v {
                Values::Int(v) => Column::new(name.into(), v),
                Values::Float(v) => Column::new(name.into(), v),
                Values::MaybeFloat(v) => Column::new(name.into(), v),
                Values::Text(v) => Column::new(name.into(), v),
            })
            .collect();
        DataFrame::new(self.rows(), columns)
            .map_err(|e| crate::Error::Input(format!("building a table: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        Table::default()
            .with("step", Values::Int(vec![1, 2, 3]))
            .with("fvu", Values::Float(vec![0.123456, 12345.6, 2e-5]))
            .with("ce", Values::MaybeFloat(vec![Some(0.5), None, Some(-1.0)]))
            .with(
                "name",
                Values::Text(vec!["a".into(), "<b>".into(), "c".into()]),
            )
    }

    #[test]
    fn cells_keep_four_significant_digits_and_leave_missing_values_empty() {
        assert_eq!(
            table().cells(),
            vec![
                vec!["1", "0.1235", "0.5000", "a"],
                vec!["2", "12346", "", "<b>"],
                vec!["3", "2.000e-5", "-1.000", "c"],
            ]
        );
    }

    #[test]
    fn tail_keeps_the_last_rows_of_every_column() {
        let t = table().tail(2);
        assert_eq!(t.rows(), 2);
        assert_eq!(t.cells()[0], vec!["2", "12346", "", "<b>"]);
        assert_eq!(table().tail(10), table());
        assert!(t.html().0.contains("&lt;b&gt;"));
    }

    #[cfg(feature = "polars")]
    #[test]
    fn frame_holds_the_same_values_with_nulls_for_missing_ones() {
        let df = table().frame().unwrap();
        assert_eq!(df.shape(), (3, 4));
        let ce = df.column("ce").unwrap();
        assert_eq!(ce.null_count(), 1);
        assert_eq!(
            df.column("fvu").unwrap().f64().unwrap().get(1),
            Some(12345.6)
        );
    }
}
