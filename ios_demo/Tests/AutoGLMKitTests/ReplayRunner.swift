import CoreML
import CryptoKit
import Foundation
import XCTest
@testable import AutoGLMKit

/// Answers Core ML predictions from a golden trace (`autoglm-export trace` on a dist/ios bundle):
/// each call must be the trace's next one (package, function, input names, shapes, values) and gets
/// that call's recorded outputs back.
final class ReplayRunner: CoreMLRunner {
    let calls: [[String: Any]]
    var next = 0

    init(trace: [String: Any]) {
        calls = trace["calls"] as! [[String: Any]]
    }

    func makeState(package: String, function: String) throws -> DecoderState { DecoderState(nil) }

    func predict(package: String, function: String, inputs: [String: MLMultiArray], state: DecoderState?) throws -> [String: MLMultiArray] {
        XCTAssertLessThan(next, calls.count, "more calls than the trace has")
        let call = calls[next]
        let where_ = "call \(next) \(package)/\(function)"
        XCTAssertEqual(call["method"] as? String, package, where_)  // the trace names each package by its file
        XCTAssertEqual(call["function"] as? String, function, where_)
        let want = call["inputs"] as! [[String: Any]]
        XCTAssertEqual(Set(want.map { $0["name"] as! String }), Set(inputs.keys), "\(where_): input names")
        for w in want {
            let name = w["name"] as! String
            guard let got = inputs[name] else { continue }
            ReplayRunner.check("\(where_) \(name)", w, got)
        }
        next += 1
        var out: [String: MLMultiArray] = [:]
        for o in call["outputs"] as! [[String: Any]] {
            out[o["name"] as! String] = ReplayRunner.array(o)
        }
        return out
    }

    /// Shape exactly; int32 values exactly; fp16 bit-exact by digest or samples within tolerance.
    static func check(_ what: String, _ w: [String: Any], _ got: MLMultiArray) {
        XCTAssertEqual(w["shape"] as! [Int], MultiArrays.shape(got), "\(what): shape")
        let values = MultiArrays.floats(got)
        if let ints = w["values"] as? [Int] {
            XCTAssertEqual(ints, values.map { Int($0) }, "\(what): values")
            return
        }
        if digest(got) == w["sha256"] as? String { return }
        let tol: Float = what.hasSuffix("pixel_values") ? 8 / 255 / 0.26 : 2e-3  // fp16 inputs
        for s in w["samples"] as! [[Any]] {
            let i = s[0] as! Int, v = sampleValue(s[1])
            if v.isInfinite { XCTAssertEqual(values[i], v, "\(what)[\(i)]"); continue }
            XCTAssertEqual(values[i], v, accuracy: tol + 1e-3 * abs(v), "\(what)[\(i)]")
        }
    }

    /// A sample: a number, or "inf" / "-inf" / "nan" (strict JSON has no infinities).
    static func sampleValue(_ v: Any) -> Float {
        if let s = v as? String { return s == "nan" ? .nan : (s.hasPrefix("-") ? -.infinity : .infinity) }
        return Float(v as! Double)
    }

    static func digest(_ a: MLMultiArray) -> String {
        var bytes = Data()
        switch a.dataType {
        case .float16:
            a.withUnsafeBufferPointer(ofType: Float16.self) { p in for v in p { withUnsafeBytes(of: v.bitPattern.littleEndian) { bytes.append(contentsOf: $0) } } }
        case .int32:
            a.withUnsafeBufferPointer(ofType: Int32.self) { p in for v in p { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } } }
        default:
            return ""
        }
        return SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
    }

    /// A recorded output: whole (base64 little-endian) when stored, else logits from the last row's top-k.
    static func array(_ o: [String: Any]) -> MLMultiArray {
        let shape = o["shape"] as! [Int]
        let count = shape.reduce(1, *)
        var values = [Float](repeating: 0, count: count)
        if let b64 = o["data_b64"] as? String, let data = Data(base64Encoded: b64) {
            let dtype = o["dtype"] as! String
            data.withUnsafeBytes { raw in
                for i in 0..<count {
                    switch dtype {
                    case "float16": values[i] = Float(Float16(bitPattern: raw.load(fromByteOffset: 2 * i, as: UInt16.self)))
                    case "float32": values[i] = raw.load(fromByteOffset: 4 * i, as: Float.self)
                    default: values[i] = Float(raw.load(fromByteOffset: 4 * i, as: Int32.self))
                    }
                }
            }
        } else if let topK = o["last_row_top_k"] as? [[Double]] {
            let vocab = shape.last!
            let floor = Float(topK.last![1]) - 100
            for i in 0..<count { values[i] = floor }
            for e in topK { values[count - vocab + Int(e[0])] = Float(e[1]) }
        }
        let a = try! MLMultiArray(shape: shape.map { NSNumber(value: $0) }, dataType: .float32)
        a.withUnsafeMutableBufferPointer(ofType: Float.self) { p, _ in for i in 0..<count { p[i] = values[i] } }
        return a
    }
}

/// Hands back the tokenizer's ids the trace recorded, after checking the prompt text is the trace's.
struct ReplayTokenizer: TextTokenizer {
    let text: String
    let ids: [Int]
    func encode(_ prompt: String) throws -> [Int] {
        XCTAssertEqual(prompt, text, "rendered chat prompt")
        return ids
    }
}
