import Foundation

/// Polyphase windowed-sinc resampling, Kaiser beta 5 (scipy.signal.resample_poly's filter), as
/// runtime preprocess/audio.py resample: output length ceil(n * up / down), no delay.
enum Resampler {
    static func resample(_ x: [Float], from orig: Int, to target: Int) -> [Float] {
        func gcd(_ a: Int, _ b: Int) -> Int { b == 0 ? a : gcd(b, a % b) }
        let g = gcd(orig, target)
        let up = target / g, down = orig / g
        if up == down { return x }
        let maxRate = max(up, down), half = 10 * maxRate, len = 2 * half + 1
        let i0Beta = besselI0(5.0)
        var h = [Double](repeating: 0, count: len)
        for j in 0..<len {
            let t = Double(j - half) / Double(maxRate)
            let sinc = j == half ? 1.0 : sin(Double.pi * t) / (Double.pi * t)
            let ratio = 2.0 * Double(j) / Double(len - 1) - 1.0
            h[j] = sinc * besselI0(5.0 * (max(0.0, 1.0 - ratio * ratio)).squareRoot()) / i0Beta
        }
        let sum = h.reduce(0, +)
        let taps = (len + up - 1) / up
        var bank = [[Double]](repeating: [Double](repeating: 0, count: taps), count: up)
        for j in 0..<len { bank[j % up][j / up] = h[j] * Double(up) / sum }
        let nOut = (x.count * up + down - 1) / down
        return (0..<nOut).map { o in
            let t = o * down + half
            let b = bank[t % up], base = t / up
            var acc = 0.0
            for j in 0..<taps {
                let k = base - j
                if k >= 0 && k < x.count { acc += Double(x[k]) * b[j] }
            }
            return Float(acc)
        }
    }

    static func besselI0(_ x: Double) -> Double {
        var term = 1.0, sum = 1.0
        let q = x * x / 4
        for k in 1..<200 {
            term *= q / Double(k * k)
            sum += term
            if term < sum * 1e-17 { break }
        }
        return sum
    }
}
