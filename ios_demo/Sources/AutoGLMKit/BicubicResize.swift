/// Pillow's Image.resize(size, BICUBIC) for 8-bit RGB, ported exactly (libImaging/Resample.c):
/// support scaled by the downscale factor, 22-bit fixed-point taps, two passes each rounded and
/// clipped to uint8. Pillow <= 12 runs the horizontal pass first; Pillow 13 (the runtime's, here)
/// sometimes runs the vertical pass first (see android_demo BicubicResize.java).
enum BicubicResize {
    private static let precisionBits = 32 - 8 - 2

    private static func cubic(_ v: Double) -> Double {
        let a = -0.5
        let x = abs(v)
        if x < 1.0 { return ((a + 2.0) * x - (a + 3.0)) * x * x + 1 }
        if x < 2.0 { return (((x - 5) * x + 8) * x - 4) * a }
        return 0.0
    }

    private static func taps(_ inSize: Int, _ outSize: Int) -> [(start: Int, coeffs: [Int32])] {
        let scale = Double(inSize) / Double(outSize)
        let filterScale = max(scale, 1.0)
        let support = 2.0 * filterScale
        return (0..<outSize).map { xx in
            let center = (Double(xx) + 0.5) * scale
            let xmin = max(Int(center - support + 0.5), 0)  // Int() truncates toward zero, as C's cast
            let count = min(Int(center + support + 0.5), inSize) - xmin
            var k = (0..<count).map { cubic((Double($0 + xmin) - center + 0.5) / filterScale) }
            let ww = k.reduce(0, +)
            if ww != 0 { k = k.map { $0 / ww } }
            let one = Double(1 << precisionBits)
            return (xmin, k.map { Int32($0 < 0 ? -0.5 + $0 * one : 0.5 + $0 * one) })
        }
    }

    private static func clip8(_ v: Int32) -> UInt8 {
        if v >= Int32(1 << precisionBits << 8) { return 255 }
        if v <= 0 { return 0 }
        return UInt8(v >> Int32(precisionBits))
    }

    /// rgb: [height][width][3] row-major.
    static func resize(_ rgb: [UInt8], width: Int, height: Int, outWidth: Int, outHeight: Int,
                       verticalFirst: Bool = false) -> [UInt8] {
        if verticalFirst {
            let tall = vertical(rgb, width: width, height: height, outHeight: outHeight)
            return horizontal(tall, width: width, height: outHeight, outWidth: outWidth)
        }
        let wide = horizontal(rgb, width: width, height: height, outWidth: outWidth)
        return vertical(wide, width: outWidth, height: height, outHeight: outHeight)
    }

    private static func horizontal(_ src: [UInt8], width: Int, height: Int, outWidth: Int) -> [UInt8] {
        if outWidth == width { return src }
        let t = taps(width, outWidth)
        var out = [UInt8](repeating: 0, count: outWidth * height * 3)
        let half = Int32(1 << (precisionBits - 1))
        for y in 0..<height {
            for xx in 0..<outWidth {
                var s = (half, half, half)
                for (x, k) in t[xx].coeffs.enumerated() {
                    let p = (y * width + x + t[xx].start) * 3
                    s.0 &+= Int32(src[p]) &* k
                    s.1 &+= Int32(src[p + 1]) &* k
                    s.2 &+= Int32(src[p + 2]) &* k
                }
                let o = (y * outWidth + xx) * 3
                out[o] = clip8(s.0); out[o + 1] = clip8(s.1); out[o + 2] = clip8(s.2)
            }
        }
        return out
    }

    private static func vertical(_ src: [UInt8], width: Int, height: Int, outHeight: Int) -> [UInt8] {
        if outHeight == height { return src }
        let t = taps(height, outHeight)
        var out = [UInt8](repeating: 0, count: width * outHeight * 3)
        let half = Int32(1 << (precisionBits - 1))
        for yy in 0..<outHeight {
            for x in 0..<width {
                var s = (half, half, half)
                for (y, k) in t[yy].coeffs.enumerated() {
                    let p = ((y + t[yy].start) * width + x) * 3
                    s.0 &+= Int32(src[p]) &* k
                    s.1 &+= Int32(src[p + 1]) &* k
                    s.2 &+= Int32(src[p + 2]) &* k
                }
                let o = (yy * width + x) * 3
                out[o] = clip8(s.0); out[o + 1] = clip8(s.1); out[o + 2] = clip8(s.2)
            }
        }
        return out
    }
}
