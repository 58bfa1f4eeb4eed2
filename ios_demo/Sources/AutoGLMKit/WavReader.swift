import Foundation

/// WAV bytes to mono float samples (runtime preprocess/audio.py load_wav): 8/16/24/32-bit PCM,
/// 32/64-bit float, plain or WAVE_FORMAT_EXTENSIBLE, channels averaged.
public enum WavReader {
    public static func read(_ data: Data, name: String) throws -> (samples: [Float], sampleRate: Int) {
        let b = [UInt8](data)
        func fail(_ why: String) -> AutoGLMError { AutoGLMError("cannot read audio file \(name): \(why)") }
        func u16(_ i: Int) -> Int { Int(b[i]) | Int(b[i + 1]) << 8 }
        func u32(_ i: Int) -> Int { u16(i) | u16(i + 2) << 16 }
        guard b.count >= 12, b[0..<4].elementsEqual("RIFF".utf8), b[8..<12].elementsEqual("WAVE".utf8) else {
            throw fail("not a WAV file (no RIFF/WAVE header)")
        }
        var fmt: (tag: Int, ch: Int, rate: Int, align: Int, bits: Int)?
        var pos = 12
        while pos + 8 <= b.count {
            let id = String(decoding: b[pos..<(pos + 4)], as: UTF8.self)
            var size = u32(pos + 4)
            let body = pos + 8
            if id == "fmt " {
                guard size >= 16, body + 16 <= b.count else { throw fail("truncated fmt chunk") }
                var tag = u16(body)
                if tag == 0xFFFE {
                    guard size >= 40, body + 26 <= b.count else { throw fail("truncated WAVE_FORMAT_EXTENSIBLE fmt chunk") }
                    tag = u16(body + 24)
                }
                fmt = (tag, u16(body + 2), u32(body + 4), u16(body + 12), u16(body + 14))
            } else if id == "data" {
                guard let f = fmt else { throw fail("data chunk before fmt chunk") }
                if size == 0xFFFF_FFFF { size = b.count - body }
                guard body + size <= b.count else { throw fail("truncated: header declares \(size) bytes of audio") }
                return try decode(b, body, size, f, fail)
            }
            pos = body + size + (size & 1)
        }
        throw fail(fmt == nil ? "no fmt chunk" : "no data chunk (truncated?)")
    }

    private static func decode(_ b: [UInt8], _ off: Int, _ size: Int, _ f: (tag: Int, ch: Int, rate: Int, align: Int, bits: Int),
                               _ fail: (String) -> AutoGLMError) throws -> (samples: [Float], sampleRate: Int) {
        guard f.tag == 1 || f.tag == 3 else { throw fail("unsupported encoding (format tag 0x\(String(f.tag, radix: 16, uppercase: true)))") }
        let width = f.bits / 8
        guard f.ch >= 1, f.bits % 8 == 0, f.align == f.ch * width else { throw fail("inconsistent fmt chunk") }
        guard (AudioPreprocessor.minRate...AudioPreprocessor.maxRate).contains(f.rate) else {
            throw fail("sample rate \(f.rate) Hz is outside the supported 8000-192000 Hz")
        }
        guard (f.tag == 1 && (1...4).contains(width)) || (f.tag == 3 && (width == 4 || width == 8)) else {
            throw fail("unsupported \(f.bits)-bit samples")
        }
        let frames = size / f.align
        guard frames > 0 else { throw fail("contains no audio samples") }
        func sample(_ p: Int) -> Float {
            var u: UInt64 = 0
            for i in 0..<width { u |= UInt64(b[p + i]) << (8 * UInt64(i)) }
            if f.tag == 3 { return width == 4 ? Float(bitPattern: UInt32(u)) : Float(Double(bitPattern: u)) }
            switch width {
            case 1: return (Float(u) - 128) / 128
            case 2: return Float(Int16(bitPattern: UInt16(u))) / 32768
            case 3: return Float(Int32(bitPattern: UInt32(u) << 8) >> 8) / 8_388_608
            default: return Float(Double(Int32(bitPattern: UInt32(u))) / 2_147_483_648)
            }
        }
        var mono = [Float](repeating: 0, count: frames)
        for fr in 0..<frames {
            var acc: Float = 0
            for c in 0..<f.ch {
                let v = sample(off + fr * f.align + c * width)
                guard v.isFinite else { throw fail("float samples contain NaN or infinity") }
                acc += v
            }
            mono[fr] = acc / Float(f.ch)
        }
        return (mono, f.rate)
    }
}
