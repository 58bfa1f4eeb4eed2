import Foundation
import ImageIO
import XCTest
@testable import AutoGLMKit

/// The golden traces of the embedded model's dist/ios bundle, replayed through AutoGLMKit: same
/// prompt, ids, positions, preprocessed tensors, Core ML calls, tokens and streamed text as the
/// Python runtime. Runs on a Mac with `swift test` after `make demo-traces` (see ios_demo/README.md);
/// AUTOGLM_BUNDLE / AUTOGLM_TRACES override the default folders.
final class GoldenTraceReplayTests: XCTestCase {
    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../..").standardized
    /// (bundle, traces) pairs: the iOS 18 stateful bundle, the iOS 17 explicit-cache one, and the iOS 18
    /// decoder as a chain of packages (one per layer plus the head, as the 9B decoder is chained).
    static var cases: [(bundle: URL, traces: URL)] {
        let env = ProcessInfo.processInfo.environment
        if let b = env["AUTOGLM_BUNDLE"], let t = env["AUTOGLM_TRACES"] {
            return [(URL(fileURLWithPath: b), URL(fileURLWithPath: t))]
        }
        return ["ios", "ios17", "ios-chain"].map {
            (repo.appendingPathComponent("build/demo/\($0)"), repo.appendingPathComponent("build/demo/traces/\($0)"))
        }
    }

    func testEveryTrace() throws {
        for c in Self.cases {
            let files = try FileManager.default.contentsOfDirectory(at: c.traces, includingPropertiesForKeys: nil)
                .filter { $0.pathExtension == "json" }.sorted { $0.path < $1.path }
            XCTAssertFalse(files.isEmpty, "no traces in \(c.traces.path): run make demo-traces")
            for f in files { try replay(f, bundle: c.bundle) }
        }
    }

    func replay(_ file: URL, bundle: URL) throws {
        let trace = try JSONSerialization.jsonObject(with: Data(contentsOf: file)) as! [String: Any]
        let manifest = try BundleManifest.read(bundle: bundle)
        let prompt = trace["prompt"] as! [String: Any]
        let runner = ReplayRunner(trace: trace)
        let generator = Generator(manifest: manifest, engine: try CoreMLEngine(manifest: manifest, runner: runner),
                                  tokenizer: ReplayTokenizer(text: prompt["text"] as! String, ids: prompt["token_ids"] as! [Int]),
                                  vocab: try Vocabulary.read(manifest.url("tokenizer.json")))
        let r = trace["request"] as! [String: Any]
        var req = Request(prompt: r["prompt"] as! String)
        req.system = r["system"] as? String
        req.maxNewTokens = r["max_new_tokens"] as! Int
        req.enableThinking = r["enable_thinking"] as? Bool
        let inputs = file.deletingLastPathComponent().appendingPathComponent("inputs")
        if let image = r["image"] as? [String: Any] {
            let src = CGImageSourceCreateWithURL(inputs.appendingPathComponent(image["file"] as! String) as CFURL, nil)!
            let img = try ImagePreprocessor.rgbBytes(CGImageSourceCreateImageAtIndex(src, 0, nil)!)
            req.image = (img.rgb, img.width, img.height)
        }
        if let audio = r["audio"] as? [String: Any] {
            let name = audio["file"] as! String
            let wav = try WavReader.read(Data(contentsOf: inputs.appendingPathComponent(name)), name: name)
            req.audio = (wav.samples, wav.sampleRate)
        }
        var tokens: [Int] = []
        var texts: [String] = []
        let result = try generator.generate(req, onText: { texts.append($0) }, onToken: { tokens.append($0) })

        let got = generator.lastPrompt!
        XCTAssertEqual(got.inputIds, prompt["input_ids"] as! [Int], "\(file.lastPathComponent): input ids")
        XCTAssertEqual(got.positionIds, prompt["position_ids"] as! [[Int]], "\(file.lastPathComponent): positions")
        XCTAssertEqual(got.ropeDelta, prompt["rope_delta"] as! Int)
        XCTAssertEqual(runner.next, (trace["calls"] as! [Any]).count, "\(file.lastPathComponent): calls left over")
        let steps = trace["steps"] as! [[String: Any]]
        XCTAssertEqual(tokens, steps.map { $0["token"] as! Int }, "\(file.lastPathComponent): tokens")
        let generated = trace["generated"] as! [String: Any]
        XCTAssertEqual(texts.joined(), steps.map { $0["text"] as! String }.joined() + (generated["stream_tail"] as! String))
        XCTAssertEqual(result.stopReason, generated["stop_reason"] as! String)
        if let pre = (trace["preprocessed"] as! [String: Any])["input_features"] as? [String: Any] {
            for s in pre["samples"] as! [[Any]] {
                XCTAssertEqual(generator.lastInputFeatures![s[0] as! Int], ReplayRunner.sampleValue(s[1]), accuracy: 2e-4)
            }
        }
    }
}
