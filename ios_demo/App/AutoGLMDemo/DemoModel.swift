import AutoGLMKit
import CoreGraphics
import CoreML
import Foundation
import ImageIO

/// The app's state: the loaded bundle, the chosen media, the streamed answer and its numbers.
/// Model work runs off the main actor; text is published back on it.
@MainActor
final class DemoModel: ObservableObject {
    @Published var status = "loading…"
    @Published var answer = ""
    @Published var stats = ""
    @Published var media = ""
    @Published var busy = false
    @Published var preview: CGImage?
    @Published var ready = false

    private var generator: Generator?
    private var manifest: BundleManifest?
    private var image: (rgb: [UInt8], width: Int, height: Int)?
    private var audio: (mono: [Float], sampleRate: Int)?

    /// Documents/bundle: copy dist/ios there with Finder (file sharing is on) or `xcrun devicectl`.
    static var bundleURL: URL {
        FileManager.default.urls(for: .documentDirectory, in: .userDomainMask)[0].appendingPathComponent("bundle")
    }

    func load() async {
        let url = DemoModel.bundleURL
        let start = Date()
        do {
            let manifest = try BundleManifest.read(bundle: url)
            try manifest.checkFiles()
            let runner = try await MLModelRunner(manifest: manifest, computeUnits: .cpuAndGPU)
            let engine = try CoreMLEngine(manifest: manifest, runner: runner)
            let tokenizer = try await HubTokenizer.load(bundle: url)
            let vocab = try Vocabulary.read(manifest.url("tokenizer.json"))
            generator = Generator(manifest: manifest, engine: engine, tokenizer: tokenizer, vocab: vocab)
            self.manifest = manifest
            ready = true
            status = String(format: "%@ (%@ cache), context %ld, loaded in %.0f ms\n%@", url.lastPathComponent,
                            manifest.kvCache, manifest.maxContext, Date().timeIntervalSince(start) * 1000, MemoryUsage.describe())
        } catch {
            status = "No bundle at \(url.path). Copy dist/ios there (see README).\n\(error.localizedDescription)"
        }
    }

    func setImage(_ cg: CGImage) {
        do {
            let px = try ImagePreprocessor.rgbBytes(cg)
            image = px
            preview = cg
            describeMedia()
        } catch {
            media = error.localizedDescription
        }
    }

    func setImage(data: Data) {
        // ImageIO applies no EXIF rotation by itself; the thumbnail API with transform does.
        guard let src = CGImageSourceCreateWithData(data as CFData, nil),
              let cg = CGImageSourceCreateThumbnailAtIndex(src, 0, [
                  kCGImageSourceCreateThumbnailFromImageAlways: true,
                  kCGImageSourceCreateThumbnailWithTransform: true,
                  kCGImageSourceThumbnailMaxPixelSize: 100_000,
              ] as CFDictionary) else {
            media = "cannot decode the image"
            return
        }
        setImage(cg)
    }

    func setRecording(_ url: URL) {
        do {
            let wav = try WavReader.read(try Data(contentsOf: url), name: url.lastPathComponent)
            audio = (wav.samples, wav.sampleRate)
            describeMedia()
        } catch {
            media = error.localizedDescription
        }
    }

    func clearMedia() {
        image = nil
        audio = nil
        preview = nil
        describeMedia()
    }

    private func describeMedia() {
        var parts: [String] = []
        if let i = image, let m = manifest { parts.append("image \(i.width)x\(i.height) -> \(m.image.width)x\(m.image.height)") }
        if let a = audio {
            var s = String(format: "audio %.1f s", Double(a.mono.count) / Double(a.sampleRate))
            if let spec = manifest?.audio {
                s += String(format: " (the model hears the first %.1f s)", Double(spec.numSamples) / Double(spec.samplingRate))
            }
            parts.append(s)
        }
        media = parts.joined(separator: "\n")
    }

    func send(_ prompt: String) {
        guard let generator, !prompt.isEmpty, !busy else { return }
        var req = Request(prompt: prompt)
        req.maxNewTokens = 256
        req.image = image
        req.audio = audio
        answer = ""
        busy = true
        Task.detached(priority: .userInitiated) {
            do {
                let r = try generator.generate(req, onText: { delta in
                    Task { @MainActor in self.answer += delta }
                })
                let line = String(format: "%ld prompt tokens, %ld generated (%@)\npreprocess+embed %.0f ms, prefill %.0f ms (%.1f tok/s), decode %.1f tok/s\n%@",
                                  r.promptTokens, r.tokenIds.count, r.stopReason, r.preprocessSeconds * 1000,
                                  r.prefillSeconds * 1000, r.prefillTokensPerSecond, r.decodeTokensPerSecond, MemoryUsage.describe())
                await MainActor.run { self.stats = line; self.busy = false }
            } catch {
                await MainActor.run { self.stats = "error: \(error.localizedDescription)"; self.busy = false }
            }
        }
    }
}
