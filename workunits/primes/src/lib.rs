//! A segmented sieve of Eratosthenes: the primes in `[low, high)` using memory in
//! proportion to the square root of `high`, whatever the width of the range.

/// Bytes of the sieve window: small enough to stay in the CPU cache.
const SEGMENT: u64 = 1 << 15;

/// Primes below `limit`, by the plain sieve (the base primes of the segmented one).
pub fn small_primes(limit: u64) -> Vec<u64> {
    let limit = limit as usize;
    let mut composite = vec![false; limit.max(2)];
    let mut primes = Vec::new();
    for n in 2..limit {
        if !composite[n] {
            primes.push(n as u64);
            let mut multiple = n * n;
            while multiple < limit {
                composite[multiple] = true;
                multiple += n;
            }
        }
    }
    primes
}

/// Calls `found` with every prime in `[low, high)`, in increasing order.
pub fn for_each_prime(low: u64, high: u64, mut found: impl FnMut(u64)) {
    let low = low.max(2);
    if low >= high {
        return;
    }
    let base = small_primes(integer_sqrt(high - 1) + 1);
    let mut composite = vec![false; SEGMENT as usize];
    let mut start = low;
    while start < high {
        let end = (start + SEGMENT).min(high);
        let window = &mut composite[..(end - start) as usize];
        window.fill(false);
        for &p in &base {
            if p * p >= end {
                break;
            }
            // The first multiple of p in the window that is not p itself.
            let mut multiple = (start.div_ceil(p) * p).max(p * p);
            while multiple < end {
                window[(multiple - start) as usize] = true;
                multiple += p;
            }
        }
        for (offset, &is_composite) in window.iter().enumerate() {
            if !is_composite {
                found(start + offset as u64);
            }
        }
        start = end;
    }
}

/// The number of primes in `[low, high)`.
pub fn count_primes(low: u64, high: u64) -> u64 {
    let mut count = 0;
    for_each_prime(low, high, |_| count += 1);
    count
}

fn integer_sqrt(n: u64) -> u64 {
    let mut root = (n as f64).sqrt() as u64;
    while root * root > n {
        root -= 1;
    }
    while (root + 1) * (root + 1) <= n {
        root += 1;
    }
    root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(low: u64, high: u64) -> Vec<u64> {
        (low..high).filter(|&n| n >= 2 && (2..n).take_while(|d| d * d <= n).all(|d| n % d != 0)).collect()
    }

    #[test]
    fn matches_trial_division_across_segment_boundaries() {
        for (low, high) in [(0, 100), (90, 200_000), (SEGMENT - 5, SEGMENT + 5), (1_000_000, 1_001_000)] {
            let mut found = Vec::new();
            for_each_prime(low, high, |p| found.push(p));
            assert_eq!(found, naive(low, high), "[{low}, {high})");
        }
    }

    #[test]
    fn known_counts() {
        assert_eq!(count_primes(0, 1_000_000), 78_498);
        assert_eq!(count_primes(0, 2), 0);
        assert_eq!(count_primes(5, 5), 0);
    }
}
