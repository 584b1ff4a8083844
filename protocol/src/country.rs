//! ISO-3166-1 alpha-2 country codes (officially assigned, plus `XK` for Kosovo).

/// The assigned codes, concatenated two letters each, sorted.
const CODES: &str = "ADAEAFAGAIALAMAOAQARASATAUAWAXAZBABBBDBEBFBGBHBIBJBLBMBNBOBQBRBSBTBVBWBYBZ\
CACCCDCFCGCHCICKCLCMCNCOCRCUCVCWCXCYCZDEDJDKDMDODZECEEEGEHERESETFIFJFKFMFOFRGAGBGDGEGFGGGHGI\
GLGMGNGPGQGRGSGTGUGWGYHKHMHNHRHTHUIDIEILIMINIOIQIRISITJEJMJOJPKEKGKHKIKMKNKPKRKWKYKZLALBLCLI\
LKLRLSLTLULVLYMAMCMDMEMFMGMHMKMLMMMNMOMPMQMRMSMTMUMVMWMXMYMZNANCNENFNGNINLNONPNRNUNZOMPAPEPF\
PGPHPKPLPMPNPRPSPTPWPYQARERORSRURWSASBSCSDSESGSHSISJSKSLSMSNSOSRSSSTSVSXSYSZTCTDTFTGTHTJTKTL\
TMTNTOTRTTTVTWTZUAUGUMUSUYUZVAVCVEVGVIVNVUWFWSXKYEYTZAZMZW";

/// The codes as a bitmap: bit `second` of row `first`, letters counted from `A`. Built
/// from [`CODES`] at compile time; a lookup is one load and a shift.
const ASSIGNED: [u32; 26] = {
    let t = CODES.as_bytes();
    let mut rows = [0u32; 26];
    let mut i = 0;
    while i < t.len() {
        rows[(t[i] - b'A') as usize] |= 1 << (t[i + 1] - b'A');
        i += 2;
    }
    rows
};

/// Normalises `code` to upper case and returns it if it is an assigned alpha-2 code.
pub fn normalize(code: &str) -> Option<[u8; 2]> {
    let &[a, b] = code.as_bytes() else {
        return None;
    };
    if !a.is_ascii_alphabetic() || !b.is_ascii_alphabetic() {
        return None;
    }
    let up = [a.to_ascii_uppercase(), b.to_ascii_uppercase()];
    let row = ASSIGNED[(up[0] - b'A') as usize];
    (row >> (up[1] - b'A') & 1 == 1).then_some(up)
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
        let bits: u32 = ASSIGNED.iter().map(|r| r.count_ones()).sum();
        assert_eq!(bits, 250, "every code is in the bitmap");
        for c in codes {
            let s = std::str::from_utf8(c).expect("ASCII");
            assert_eq!(normalize(s), Some([c[0], c[1]]), "{s}");
        }
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
