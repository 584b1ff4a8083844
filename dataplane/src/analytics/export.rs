//! `format=csv`: a route's table as CSV (RFC 4180), for callers holding
//! `analytics:export` besides the route's own permission. Which table each route exports
//! is fixed here; routes without one refuse the format (400 on `format`).
//!
//! Columns are the table's field names in name order (the series of
//! `/realtime/series`: `ts, online, active_5m_sum, active_15m_sum, revenue_cents`, the
//! columns Croupier's dashboard exports); nested values are written as JSON. A text cell
//! that a spreadsheet would run as a formula (starting with `=`, `+`, `-`, `@` — after
//! spaces too, or in full width — tab or carriage return) is prefixed with `'`, and one holding `;` is quoted (a separator in
//! many locales): user ids and event names come from clients.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use super::error::ApiError;
use super::Route;

/// What a route exports.
enum Table {
    /// The array of objects under this field.
    Rows(&'static str),
    /// Series of `[time, n]` under these fields, joined on time.
    Series(&'static [&'static str]),
}

fn table_of(route: Route) -> Option<Table> {
    Some(match route {
        Route::RealtimeSeries => Table::Series(&["online", "active_5m_sum", "active_15m_sum", "revenue_cents"]),
        Route::Retention | Route::Ltv => Table::Rows("cohorts"),
        Route::PaymentsTransactions => Table::Rows("transactions"),
        Route::PaymentsProductTrend => Table::Rows("products"),
        Route::BehaviorEvents => Table::Rows("events"),
        Route::BehaviorFunnel => Table::Rows("steps"),
        Route::BehaviorPaths => Table::Rows("paths"),
        Route::BehaviorAdoption => Table::Rows("features"),
        Route::BehaviorAdoptionBreakdown => Table::Rows("rows"),
        Route::Segments => Table::Rows("segments"),
        Route::Attribution => Table::Rows("by_channel"),
        _ => return None,
    })
}

/// Whether `route` answers `format=csv`; else the refusal.
pub fn check(route: Route) -> Result<(), ApiError> {
    match table_of(route) {
        Some(_) => Ok(()),
        None => Err(ApiError::param("format", "csv is offered by routes that answer a table; this one does not")),
    }
}

/// What a spreadsheet may read as the start of a formula.
const FORMULA_STARTS: [char; 8] = ['=', '+', '-', '@', '\u{FF1D}', '\u{FF0B}', '\u{FF0D}', '\u{FF20}'];

fn cell(v: &Json, out: &mut String) {
    let text = match v {
        Json::Null => String::new(),
        Json::String(s) => {
            // Also after leading spaces, a byte-order mark or a zero-width space (some
            // imports drop them) and in full width (some spreadsheets read `＝` as `=`).
            let lead = s.trim_start_matches(|c: char| c.is_whitespace() || matches!(c, '\u{FEFF}' | '\u{200B}'));
            if s.starts_with(['\t', '\r']) || lead.starts_with(FORMULA_STARTS) {
                format!("'{s}")
            } else {
                s.clone()
            }
        }
        other => other.to_string(),
    };
    // Quoted when it holds a separator — `;` too: spreadsheets in many locales split CSV
    // on it, and `;=1+1` would become a cell holding a live formula.
    if text.contains([',', ';', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&text.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(&text);
    }
}

fn line(cells: &[&Json], out: &mut String) {
    for (i, c) in cells.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        cell(c, out);
    }
    out.push_str("\r\n");
}

/// `answer` (the route's JSON) as CSV.
pub fn csv(route: Route, answer: &Json) -> Result<String, ApiError> {
    let table = table_of(route).ok_or_else(|| ApiError::param("format", "no table to export"))?;
    let mut out = String::new();
    match table {
        Table::Rows(field) => {
            let rows = answer.get(field).and_then(Json::as_array).map(Vec::as_slice).unwrap_or_default();
            let mut columns: Vec<&String> = Vec::new();
            for r in rows.iter().filter_map(Json::as_object) {
                for k in r.keys() {
                    if !columns.contains(&k) {
                        columns.push(k);
                    }
                }
            }
            columns.sort();
            let names: Vec<Json> = columns.iter().map(|c| Json::String((*c).clone())).collect();
            line(&names.iter().collect::<Vec<_>>(), &mut out);
            for r in rows {
                let cells: Vec<&Json> = columns.iter().map(|c| r.get(c.as_str()).unwrap_or(&Json::Null)).collect();
                line(&cells, &mut out);
            }
        }
        Table::Series(fields) => {
            let mut by_time: BTreeMap<String, Vec<Json>> = BTreeMap::new();
            for (i, f) in fields.iter().enumerate() {
                for point in answer.get(*f).and_then(Json::as_array).map(Vec::as_slice).unwrap_or_default() {
                    if let (Some(t), Some(n)) = (point.get(0).and_then(Json::as_str), point.get(1)) {
                        by_time.entry(t.to_owned()).or_insert_with(|| vec![Json::Null; fields.len()])[i] = n.clone();
                    }
                }
            }
            let mut head = vec![Json::String("ts".into())];
            head.extend(fields.iter().map(|f| Json::String((*f).into())));
            line(&head.iter().collect::<Vec<_>>(), &mut out);
            for (t, values) in &by_time {
                let t = Json::String(t.clone());
                let mut cells = vec![&t];
                cells.extend(values.iter());
                line(&cells, &mut out);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rows_are_quoted_and_formulas_defused() {
        let answer = json!({"paths": [
            {"path": "a>b", "groups": 3},
            {"path": "=HYPERLINK(\"x\"),y", "groups": 1, "extra": [1, 2]},
            {"path": ";=1+1", "groups": 2},
            {"path": " =1+1", "groups": 4},
            {"path": "\u{FF1D}1+1", "groups": 5},
            {"path": "\u{FEFF}\u{200B}=1", "groups": 6},
        ]});
        assert_eq!(
            csv(Route::BehaviorPaths, &answer).unwrap(),
            "extra,groups,path\r\n,3,a>b\r\n\"[1,2]\",1,\"'=HYPERLINK(\"\"x\"\"),y\"\r\n,2,\";=1+1\"\r\n\
             ,4,' =1+1\r\n,5,'\u{FF1D}1+1\r\n,6,'\u{FEFF}\u{200B}=1\r\n"
        );
    }

    #[test]
    fn series_are_joined_on_time() {
        let answer = json!({
            "online": [["2026-12-01T00:00:00Z", 5], ["2026-12-01T00:01:00Z", 7]],
            "active_5m_sum": [["2026-12-01T00:00:00Z", 5], ["2026-12-01T00:01:00Z", 12]],
            "active_15m_sum": [["2026-12-01T00:00:00Z", 5], ["2026-12-01T00:01:00Z", 12]],
            "revenue_cents": [["2026-12-01T00:01:00Z", 199]],
        });
        assert_eq!(
            csv(Route::RealtimeSeries, &answer).unwrap(),
            "ts,online,active_5m_sum,active_15m_sum,revenue_cents\r\n\
             2026-12-01T00:00:00Z,5,5,5,\r\n2026-12-01T00:01:00Z,7,12,12,199\r\n"
        );
        assert!(check(Route::Overview).is_err() && check(Route::Segments).is_ok());
    }
}
