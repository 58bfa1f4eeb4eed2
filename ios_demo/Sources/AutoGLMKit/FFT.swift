import Foundation

/// Mixed-radix complex FFT for any length. Accelerate's vDSP DFT takes only f * 2^n lengths
/// (f in 1, 3, 5, 15) and Whisper's n_fft is 400 = 25 * 16, so this is our own.
struct FFT {
    let n: Int
    private let cosT: [Double]
    private let sinT: [Double]

    init(_ n: Int) {
        self.n = n
        cosT = (0..<n).map { cos(-2.0 * Double.pi * Double($0) / Double(n)) }
        sinT = (0..<n).map { sin(-2.0 * Double.pi * Double($0) / Double(n)) }
    }

    /// Forward transform in place: X[k] = sum_j x[j] e^{-2 pi i jk/n}.
    func transform(_ re: inout [Double], _ im: inout [Double]) {
        let xr = re, xi = im
        rec(xr, xi, offset: 0, stride: 1, len: n, &re, &im, out: 0)
    }

    private func rec(_ xr: [Double], _ xi: [Double], offset: Int, stride: Int, len: Int,
                     _ or: inout [Double], _ oi: inout [Double], out: Int) {
        if len == 1 {
            or[out] = xr[offset]; oi[out] = xi[offset]
            return
        }
        var p = len
        var f = 2
        while f * f <= len { if len % f == 0 { p = f; break }; f += 1 }
        let m = len / p
        for r in 0..<p {
            rec(xr, xi, offset: offset + r * stride, stride: stride * p, len: m, &or, &oi, out: out + r * m)
        }
        let tw = n / len
        var sr = [Double](repeating: 0, count: p), si = [Double](repeating: 0, count: p)
        for k in 0..<m {
            for r in 0..<p { sr[r] = or[out + r * m + k]; si[r] = oi[out + r * m + k] }
            for q in 0..<p {
                let kk = k + q * m
                var accR = 0.0, accI = 0.0
                for r in 0..<p {
                    let idx = (r * kk * tw) % n
                    accR += sr[r] * cosT[idx] - si[r] * sinT[idx]
                    accI += sr[r] * sinT[idx] + si[r] * cosT[idx]
                }
                or[out + kk] = accR; oi[out + kk] = accI
            }
        }
    }
}
