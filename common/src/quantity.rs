//! Kubernetes resource quantities (`100m`, `2`, `1Gi`, `500M`, `1e3`, `1.5Gi`) parsed into
//! integers: milli-units for CPU, whole units (bytes, counts) for everything else.
//!
//! The grammar is apimachinery's: an optionally signed decimal number (`5`, `5.`, `.5`, `5.25`)
//! followed by a binary-SI suffix (`Ki` … `Ei`), a decimal-SI suffix (`m`, `k`, `M`, `G`, `T`,
//! `P`, `E`) or a decimal exponent (`e3`, `E-2`). Like `Quantity.Value()` and `MilliValue()`,
//! conversions round away from zero, so `0.1m` of CPU is 1 milli-CPU and `1.5` bytes is 2.
//! Parsing never panics: bad input is a [`QuantityError`].

/// Why a quantity string could not be turned into an integer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("quantity is empty")]
    Empty,
    #[error("quantity {0:?} does not start with a number")]
    MissingNumber(String),
    #[error("quantity {0:?} has an unknown suffix")]
    UnknownSuffix(String),
    #[error("quantity {0:?} has more significant digits than can be represented")]
    TooPrecise(String),
    #[error("quantity {0:?} does not fit in a 64-bit integer")]
    TooLarge(String),
}

/// Significant digits kept exactly: 10^36 still fits a u128 with room for a binary suffix.
const MAX_SIGNIFICANT_DIGITS: u32 = 36;
/// Decimal exponents beyond this are astronomically large or small; clamping keeps the
/// arithmetic in range without changing any result (huge → too large, tiny → rounds to 1).
const MAX_EXPONENT: i32 = 1000;

/// A parsed quantity: `(-1)^negative × mantissa × 10^exponent10 × 2^exponent2`, exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedQuantity {
    negative: bool,
    mantissa: u128,
    exponent10: i32,
    exponent2: u32,
}

impl ParsedQuantity {
    /// Parses a quantity string. Surrounding whitespace is ignored, as it is when a
    /// `Quantity` is read from JSON.
    pub fn parse(text: &str) -> Result<Self, QuantityError> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(QuantityError::Empty);
        }
        let bytes = trimmed.as_bytes();
        let mut position = 0;
        let mut negative = false;
        if let Some(&sign) = bytes.first() {
            if sign == b'+' || sign == b'-' {
                negative = sign == b'-';
                position = 1;
            }
        }

        let mut mantissa: u128 = 0;
        let mut significant_digits = 0u32;
        let mut exponent10: i32 = 0;
        let mut saw_digit = false;
        let mut in_fraction = false;
        while let Some(&byte) = bytes.get(position) {
            if byte == b'.' && !in_fraction {
                in_fraction = true;
                position += 1;
                continue;
            }
            if !byte.is_ascii_digit() {
                break;
            }
            saw_digit = true;
            let digit = u128::from(byte - b'0');
            if in_fraction {
                exponent10 -= 1;
            }
            // Leading zeros carry no precision, so they do not count against the limit.
            if mantissa != 0 || digit != 0 {
                significant_digits += 1;
                if significant_digits > MAX_SIGNIFICANT_DIGITS {
                    return Err(QuantityError::TooPrecise(text.to_string()));
                }
                mantissa = mantissa * 10 + digit;
            }
            position += 1;
        }
        if !saw_digit {
            return Err(QuantityError::MissingNumber(text.to_string()));
        }

        let suffix = &trimmed[position..];
        let (suffix_exponent10, exponent2) =
            parse_suffix(suffix).ok_or_else(|| QuantityError::UnknownSuffix(text.to_string()))?;
        let exponent10 =
            (exponent10 + suffix_exponent10).clamp(-2 * MAX_EXPONENT, 2 * MAX_EXPONENT);

        let mut quantity = ParsedQuantity {
            negative,
            mantissa,
            exponent10,
            exponent2,
        };
        quantity.normalize();
        Ok(quantity)
    }

    /// Moves trailing decimal zeros into the exponent so `1.000000Gi` does not overflow
    /// intermediate arithmetic.
    fn normalize(&mut self) {
        if self.mantissa == 0 {
            self.negative = false;
            self.exponent10 = 0;
            self.exponent2 = 0;
            return;
        }
        while self.mantissa % 10 == 0 {
            self.mantissa /= 10;
            self.exponent10 += 1;
        }
    }

    /// True for quantities below zero (`-1`); resource requests never are.
    pub fn is_negative(&self) -> bool {
        self.negative
    }

    /// The value times `10^scale`, rounded away from zero; `None` if it overflows an i64.
    fn scaled(&self, scale: i32) -> Option<i64> {
        if self.mantissa == 0 {
            return Some(0);
        }
        let mut magnitude = self.mantissa.checked_mul(1u128 << self.exponent2)?;
        let exponent = self.exponent10 + scale;
        if exponent >= 0 {
            magnitude = magnitude.checked_mul(10u128.checked_pow(exponent.unsigned_abs())?)?;
        } else {
            let divisor_exponent = exponent.unsigned_abs();
            // 10^39 exceeds every u128, so the quotient is a positive fraction: rounds to 1.
            magnitude = match 10u128.checked_pow(divisor_exponent) {
                Some(divisor) => magnitude.div_ceil(divisor),
                None => 1,
            };
        }
        let magnitude = i64::try_from(magnitude).ok()?;
        Some(if self.negative { -magnitude } else { magnitude })
    }

    /// The value in thousandths (`MilliValue()`): `100m` → 100, `2` → 2000.
    pub fn milli_value(&self) -> Option<i64> {
        self.scaled(3)
    }

    /// The value in whole units (`Value()`): `1Ki` → 1024, `1.5` → 2.
    pub fn value(&self) -> Option<i64> {
        self.scaled(0)
    }
}

/// Decimal and binary exponents of a suffix, or `None` if it is not one.
fn parse_suffix(suffix: &str) -> Option<(i32, u32)> {
    let known = match suffix {
        "" => (0, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        _ => {
            let exponent = suffix
                .strip_prefix('e')
                .or_else(|| suffix.strip_prefix('E'))?;
            return Some((parse_exponent(exponent)?, 0));
        }
    };
    Some(known)
}

/// A signed decimal integer exponent, clamped (see [`MAX_EXPONENT`]).
fn parse_exponent(text: &str) -> Option<i32> {
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut value: i32 = 0;
    for byte in digits.bytes() {
        value = (value * 10 + i32::from(byte - b'0')).min(MAX_EXPONENT);
    }
    Some(if negative { -value } else { value })
}

/// Parses `text` into thousandths (CPU's unit).
pub fn parse_milli(text: &str) -> Result<i64, QuantityError> {
    ParsedQuantity::parse(text)?
        .milli_value()
        .ok_or_else(|| QuantityError::TooLarge(text.to_string()))
}

/// Parses `text` into whole units (bytes for memory and storage, counts otherwise).
pub fn parse_value(text: &str) -> Result<i64, QuantityError> {
    ParsedQuantity::parse(text)?
        .value()
        .ok_or_else(|| QuantityError::TooLarge(text.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities_become_milli_units() {
        assert_eq!(parse_milli("100m"), Ok(100));
        assert_eq!(parse_milli("2"), Ok(2000));
        assert_eq!(parse_milli("0.5"), Ok(500));
        assert_eq!(parse_milli(".25"), Ok(250));
        assert_eq!(parse_milli("1."), Ok(1000));
        assert_eq!(parse_milli("1e3"), Ok(1_000_000));
        assert_eq!(parse_milli("1E-3"), Ok(1));
        assert_eq!(parse_milli("+3"), Ok(3000));
        assert_eq!(parse_milli("1k"), Ok(1_000_000));
    }

    #[test]
    fn memory_quantities_become_bytes() {
        assert_eq!(parse_value("1Gi"), Ok(1 << 30));
        assert_eq!(parse_value("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_value("500M"), Ok(500_000_000));
        assert_eq!(parse_value("128974848"), Ok(128_974_848));
        assert_eq!(parse_value("129e6"), Ok(129_000_000));
        assert_eq!(parse_value("123Mi"), Ok(123 * 1024 * 1024));
        assert_eq!(parse_value("1Ei"), Ok(1 << 60));
        assert_eq!(parse_value("1E"), Ok(1_000_000_000_000_000_000));
        assert_eq!(parse_value("0"), Ok(0));
        assert_eq!(parse_value("-0"), Ok(0));
        assert_eq!(parse_value("  64Mi "), Ok(64 << 20));
        assert_eq!(parse_value("1.000000000000000000000000000000Ki"), Ok(1024));
    }

    #[test]
    fn fractions_round_away_from_zero() {
        assert_eq!(parse_milli("0.1m"), Ok(1));
        assert_eq!(parse_milli("1e-30"), Ok(1));
        assert_eq!(parse_milli("1e-999999"), Ok(1));
        assert_eq!(parse_value("1.5"), Ok(2));
        assert_eq!(parse_value("100m"), Ok(1));
        assert_eq!(parse_value("-1.5"), Ok(-2));
        assert!(ParsedQuantity::parse("-1").unwrap().is_negative());
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        assert_eq!(parse_value(""), Err(QuantityError::Empty));
        assert_eq!(parse_value("   "), Err(QuantityError::Empty));
        for text in ["Gi", ".", "-", "+.", "abc", "--1"] {
            assert_eq!(
                parse_value(text),
                Err(QuantityError::MissingNumber(text.to_string())),
                "{text}"
            );
        }
        for text in [
            "1Gb", "1 Gi", "1e", "1e+", "1ee3", "1.2.3", "1KI", "1i", "1e3.5", "5x",
        ] {
            assert_eq!(
                parse_value(text),
                Err(QuantityError::UnknownSuffix(text.to_string())),
                "{text}"
            );
        }
        assert_eq!(
            parse_value("9223372036854775808"),
            Err(QuantityError::TooLarge("9223372036854775808".to_string()))
        );
        assert_eq!(parse_value("9223372036854775807"), Ok(i64::MAX));
        assert!(matches!(
            parse_value("1e999999"),
            Err(QuantityError::TooLarge(_))
        ));
        assert!(matches!(
            parse_milli("16Ei"),
            Err(QuantityError::TooLarge(_))
        ));
        assert!(matches!(
            parse_value("1234567890123456789012345678901234567"),
            Err(QuantityError::TooPrecise(_))
        ));
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        let alphabet = [
            "", "1", "9", ".", "-", "+", "e", "E", "i", "K", "m", "Gi", "0", "é",
        ];
        for a in alphabet {
            for b in alphabet {
                for c in alphabet {
                    for d in alphabet {
                        let text = format!("{a}{b}{c}{d}");
                        let _ = parse_value(&text);
                        let _ = parse_milli(&text);
                    }
                }
            }
        }
    }
}
