import CoreGraphics
import Foundation

/// A picture to the vision tower's pixel_values [patches, 3*t*p*p] (runtime preprocess/image.py):
/// drawn over white (transparency as transformers' convert_to_rgb), Pillow-exact bicubic stretch
/// to the export size, rescale and normalise in float32, Glm4vImageProcessor's patch order.
public struct ImagePreprocessor {
    let spec: BundleManifest.ImageSpec
    let verticalFirst: Bool

    public init(spec: BundleManifest.ImageSpec, verticalFirst: Bool = false) {
        self.spec = spec
        self.verticalFirst = verticalFirst
    }

    /// RGB bytes of a CGImage via CoreGraphics, in the image's own RGB colour space: Pillow ignores
    /// ICC profiles, so converting a Display P3 screenshot to sRGB here would change the pixels.
    public static func rgbBytes(_ image: CGImage) throws -> (rgb: [UInt8], width: Int, height: Int) {
        let w = image.width, h = image.height
        let space = (image.colorSpace?.model == .rgb ? image.colorSpace : nil) ?? CGColorSpace(name: CGColorSpace.sRGB)!
        var rgba = [UInt8](repeating: 255, count: w * h * 4)
        let drawn: Bool = rgba.withUnsafeMutableBytes { buf in
            guard let ctx = CGContext(data: buf.baseAddress, width: w, height: h, bitsPerComponent: 8,
                                      bytesPerRow: w * 4, space: space,
                                      bitmapInfo: CGImageAlphaInfo.noneSkipLast.rawValue) else { return false }
            ctx.setFillColor(CGColor(colorSpace: space, components: [1, 1, 1, 1])!)
            ctx.fill(CGRect(x: 0, y: 0, width: w, height: h))
            ctx.interpolationQuality = .none
            ctx.draw(image, in: CGRect(x: 0, y: 0, width: w, height: h))
            return true
        }
        guard drawn else { throw AutoGLMError("cannot draw a \(w)x\(h) image into an RGB bitmap") }
        var rgb = [UInt8](repeating: 0, count: w * h * 3)
        for i in 0..<(w * h) {
            rgb[3 * i] = rgba[4 * i]; rgb[3 * i + 1] = rgba[4 * i + 1]; rgb[3 * i + 2] = rgba[4 * i + 2]
        }
        return (rgb, w, h)
    }

    public func preprocess(rgb: [UInt8], width: Int, height: Int) throws -> [Float] {
        guard width > 0, height > 0, rgb.count == width * height * 3 else {
            throw AutoGLMError("image of \(width)x\(height) needs \(width * height * 3) RGB bytes, got \(rgb.count)")
        }
        var pixels = rgb
        if width != spec.width || height != spec.height {
            pixels = BicubicResize.resize(rgb, width: width, height: height, outWidth: spec.width,
                                          outHeight: spec.height, verticalFirst: verticalFirst)
        }
        // Plain float32 arithmetic (not vDSP's multiply-by-reciprocal) to equal the runtime's bits.
        var hwc = [Float](repeating: 0, count: pixels.count)
        for i in 0..<pixels.count {
            let c = i % 3
            let v = Float(Double(pixels[i]) * spec.rescaleFactor)
            hwc[i] = (v - spec.mean[c]) / spec.std[c]
        }
        return patchify(hwc)
    }

    private func patchify(_ hwc: [Float]) -> [Float] {
        let p = spec.patchSize, m = spec.mergeSize, t = spec.temporalPatchSize
        let gh = spec.height / p, gw = spec.width / p, dim = spec.patchDim
        var out = [Float](repeating: 0, count: spec.numPatches * dim)
        var row = 0
        for bh in 0..<(gh / m) { for bw in 0..<(gw / m) { for mh in 0..<m { for mw in 0..<m {
            let py0 = (bh * m + mh) * p, px0 = (bw * m + mw) * p
            for c in 0..<3 { for tt in 0..<t { for y in 0..<p { for x in 0..<p {
                let col = ((c * t + tt) * p + y) * p + x
                out[row * dim + col] = hwc[((py0 + y) * spec.width + px0 + x) * 3 + c]
            } } } }
            row += 1
        } } } }
        return out
    }
}
