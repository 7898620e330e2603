//! [`Table`]: left-aligned columns separated by two spaces.

use std::io::Write;

use super::error::CliError;

/// Rows of cells printed with every column as wide as its widest cell.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<const N: usize>(headers: [&str; N]) -> Table {
        let mut table = Table::default();
        table.row(headers);
        table
    }

    pub fn row<const N: usize>(&mut self, cells: [&str; N]) {
        assert!(
            self.rows.first().is_none_or(|headers| headers.len() == N),
            "a row of {N} cells in a table of other width"
        );
        self.rows.push(cells.iter().map(|cell| cell.to_string()).collect());
    }

    pub fn write(&self, out: &mut dyn Write) -> Result<(), CliError> {
        let columns = self.rows.first().map_or(0, Vec::len);
        let widths: Vec<usize> = (0..columns)
            .map(|column| self.rows.iter().map(|row| row[column].chars().count()).max().unwrap_or(0))
            .collect();
        for row in &self.rows {
            let mut line = String::new();
            for (column, cell) in row.iter().enumerate() {
                if column + 1 == columns {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<width$}  ", width = widths[column]));
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let mut table = Table::new(["KIND", "FREE"]);
        table.row(["cpu_cores", "2"]);
        table.row(["gpu", ""]);
        let mut out = Vec::new();

        table.write(&mut out).unwrap();

        assert_eq!("KIND       FREE\ncpu_cores  2\ngpu\n", String::from_utf8(out).unwrap());
    }
}
