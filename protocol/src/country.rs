//! ISO-3166-1 alpha-2 country codes (officially assigned, plus `XK` for Kosovo).

/// The assigned codes, concatenated two letters each, sorted.
const CODES: &str = "ADAEAFAGAIALAMAOAQARASATAUAWAXAZBABBBDBEBFBGBHBIBJBLBMBNBOBQBRBSBTBVBWBYBZ\
CACCCDCFCGCHCICKCLCMCNCOCRCUCVCWCXCYCZDEDJDKDMDODZECEEEGEHERESETFIFJFKFMFOFRGAGBGDGEGFGGGHGI\
GLGMGNGPGQGRGSGTGUGWGYHKHMHNHRHTHUIDIEILIMINIOIQIRISITJEJMJOJPKEKGKHKIKMKNKPKRKWKYKZLALBLCLI\
LKLRLSLTLULVLYMAMCMDMEMFMGMHMKMLMMMNMOMPMQMRMSMTMUMVMWMXMYMZNANCNENFNGNINLNONPNRNUNZOMPAPEPF\
PGPHPKPLPMPNPRPSPTPWPYQARERORSRURWSASBSCSDSESGSHSISJSKSLSMSNSOSRSSSTSVSXSYSZTCTDTFTGTHTJTKTL\
TMTNTOTRTTTVTWTZUAUGUMUSUYUZVAVCVEVGVIVNVUWFWSXKYEYTZAZMZW";

/// Normalises `code` to upper case and returns it if it is an assigned alpha-2 code.
pub fn normalize(code: &str) -> Option<[u8; 2]> {
    let b = code.as_bytes();
    if b.len() != 2 || !b.iter().all(u8::is_ascii_alphabetic) {
        return None;
    }
    let up = [b[0].to_ascii_uppercase(), b[1].to_ascii_uppercase()];
    let table = CODES.as_bytes();
    let n = table.len() / 2;
    let (mut lo, mut hi) = (0usize, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        let c = [table[2 * mid], table[2 * mid + 1]];
        match c.cmp(&up) {
            std::cmp::Ordering::Equal => return Some(up),
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_complete() {
        let t = CODES.as_bytes();
        assert_eq!(t.len() % 2, 0);
        let codes: Vec<&[u8]> = t.chunks(2).collect();
        assert!(codes.windows(2).all(|w| w[0] < w[1]), "table must be sorted");
        assert_eq!(codes.len(), 250, "249 assigned codes plus XK");
    }

    #[test]
    fn accepts_assigned_codes_in_any_case() {
        assert_eq!(normalize("US"), Some(*b"US"));
        assert_eq!(normalize("cn"), Some(*b"CN"));
        assert_eq!(normalize("Zw"), Some(*b"ZW"));
        assert_eq!(normalize("AD"), Some(*b"AD"));
    }

    #[test]
    fn refuses_unassigned_and_malformed() {
        for bad in ["XX", "UK", "USA", "U", "", "1A", "é"] {
            assert_eq!(normalize(bad), None, "{bad:?}");
        }
    }
}
