import Foundation

/// manifest.json of an autoglm-export bundle (runtime/autoglm_runtime/bundle.py): runtime spec,
/// chat template, special tokens and, for Core ML bundles, the package table.
public struct BundleManifest {
    public static let schemaVersion = 1

    public struct ImageSpec {
        public let height: Int, width: Int, patchSize: Int, temporalPatchSize: Int, mergeSize: Int
        public let mean: [Float], std: [Float]
        public let rescaleFactor: Double
        public var gridTHW: (Int, Int, Int) { (1, height / patchSize, width / patchSize) }
        public var numPatches: Int { (height / patchSize) * (width / patchSize) }
        public var numTokens: Int { numPatches / (mergeSize * mergeSize) }
        public var patchDim: Int { 3 * temporalPatchSize * patchSize * patchSize }
    }

    public struct AudioSpec {
        public let samplingRate: Int, numMelBins: Int, nFFT: Int, hopLength: Int, numFrames: Int
        public var numSamples: Int { numFrames * hopLength }
    }

    public struct ChatTemplate {
        public let prefix: String, turn: String, generationPrompt: String
        public let imagePlaceholder: String, audioPlaceholder: String, thinkingOffSuffix: String
    }

    public typealias Functions = [String: (inputs: [String], outputs: [String], states: [String])]

    /// One Core ML package: its file and, per function, input / output / state names.
    public struct Package {
        public let file: String
        public let functions: Functions
    }

    /// One package of the decoder's chain (`coreml.packages.text_decoder.chunks`; a decoder in one package
    /// is a chain of one). Every call runs the chain in order: the first package on the call's
    /// `inputs_embeds`, each next one on the previous one's `output` (fed as its `inputs_embeds`), all
    /// with the same `position_ids` and `causal_mask`; the last returns `logits`.
    public struct DecoderLink {
        public let file: String
        public let output: String  // "hidden_states", or "logits" for the last
        public let cacheShape: [Int]?  // its own layers' cache; nil for the head (hidden states in, logits out)
        public let functions: Functions
    }

    public let root: URL
    public let target: String
    public let maxContext: Int
    public let maxSeqLen: Int
    public let vocabSize: Int
    public let hiddenSize: Int
    public let eosTokenIds: Set<Int>
    public let imageTokenId: Int
    public let image: ImageSpec
    public let audioTokenId: Int?
    public let audioTokens: Int
    public let audio: AudioSpec?
    public let chatTemplate: ChatTemplate
    public let specialTokens: [String: Int]
    public let files: [String: Int]
    // Core ML
    public let packages: [String: Package]
    public let decoderChain: [DecoderLink]
    public let prefillChunk: Int
    public let kvCache: String  // "state" (iOS 18) or "inputs_outputs" (iOS 17)

    public static func read(bundle root: URL) throws -> BundleManifest {
        let url = root.appendingPathComponent("manifest.json")
        guard let data = try? Data(contentsOf: url) else {
            throw AutoGLMError("\(url.path): missing; not an autoglm-export bundle (copy the whole dist/ios folder)")
        }
        guard let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw AutoGLMError("\(url.path): invalid JSON")
        }
        return try BundleManifest(root: root, json: json, path: url.path)
    }

    init(root: URL, json m: [String: Any], path: String) throws {
        func need<T>(_ d: [String: Any], _ key: String, _ type: T.Type = T.self) throws -> T {
            guard let v = d[key] as? T else { throw AutoGLMError("\(path): missing or malformed '\(key)'") }
            return v
        }
        let version: Int = try need(m, "schema_version")
        if version > BundleManifest.schemaVersion {
            throw AutoGLMError("\(path): schema_version \(version) is newer than this app reads (\(BundleManifest.schemaVersion)); update the app")
        }
        self.root = root
        target = try need(m, "target")
        let rt: [String: Any] = try need(m, "runtime")
        maxContext = try need(rt, "max_context")
        vocabSize = try need(rt, "vocab_size")
        hiddenSize = try need(rt, "hidden_size")
        eosTokenIds = Set(try need(rt, "eos_token_ids", [Int].self))
        imageTokenId = try need(rt, "image_token_id")
        let im: [String: Any] = try need(rt, "image")
        image = ImageSpec(
            height: try need(im, "height"), width: try need(im, "width"),
            patchSize: try need(im, "patch_size"), temporalPatchSize: try need(im, "temporal_patch_size"),
            mergeSize: try need(im, "merge_size"),
            // The runtime casts the JSON doubles to float32; so do we.
            mean: try need(im, "image_mean", [Double].self).map { Float($0) },
            std: try need(im, "image_std", [Double].self).map { Float($0) },
            rescaleFactor: try need(im, "rescale_factor"))
        if let au = rt["audio"] as? [String: Any] {
            audio = AudioSpec(
                samplingRate: try need(au, "sampling_rate"), numMelBins: try need(au, "num_mel_bins"),
                nFFT: try need(au, "n_fft"), hopLength: try need(au, "hop_length"),
                numFrames: try need(au, "num_frames"))
            audioTokenId = try need(rt, "audio_token_id")
            audioTokens = try need(rt, "audio_tokens")
        } else {
            audio = nil
            audioTokenId = nil
            audioTokens = 0
        }
        let ct: [String: Any] = try need(m, "chat_template")
        chatTemplate = ChatTemplate(
            prefix: try need(ct, "prefix"), turn: try need(ct, "turn"),
            generationPrompt: try need(ct, "generation_prompt"),
            imagePlaceholder: try need(ct, "image_placeholder"),
            audioPlaceholder: try need(ct, "audio_placeholder"),
            thinkingOffSuffix: try need(ct, "thinking_off_suffix"))
        specialTokens = try need(m, "special_tokens")
        let fileTable: [String: [String: Any]] = try need(m, "files")
        files = fileTable.compactMapValues { $0["bytes"] as? Int }
        maxSeqLen = (m["max_seq_len"] as? Int) ?? maxContext

        func functions(_ p: [String: Any]) -> Functions {
            var fns: Functions = [:]
            for (name, f) in (p["functions"] as? [String: [String: Any]]) ?? [:] {
                func names(_ key: String) -> [String] {
                    ((f[key] as? [[String: Any]]) ?? []).compactMap { $0["name"] as? String }
                }
                fns[name] = (names("inputs"), names("outputs"), names("states"))
            }
            return fns
        }
        var pkgs: [String: Package] = [:]
        var chain: [DecoderLink] = []
        var chunk = 1, cache = "state", shape: [Int] = []
        if let coreml = m["coreml"] as? [String: Any], let table = coreml["packages"] as? [String: [String: Any]] {
            for (component, p) in table {
                pkgs[component] = Package(file: try need(p, "file"), functions: functions(p))
            }
            if let dec = table[ModelNames.componentTextDecoder] {
                chunk = try need(dec, "prefill_chunk")
                cache = (dec["kv_cache"] as? String) ?? "state"
                shape = try need(dec, "cache_shape")
                var links = (dec["chunks"] as? [[String: Any]]) ?? []
                if links.isEmpty {  // one package: a chain of one
                    let one: [String: Any] = ["file": try need(dec, "file", String.self), "output": ModelNames.outputLogits,
                                              "cache_shape": shape, "functions": dec["functions"] ?? [String: Any]()]
                    links = [one]
                }
                chain = try links.map { link in
                    DecoderLink(file: try need(link, "file"), output: (link["output"] as? String) ?? ModelNames.outputLogits,
                                cacheShape: link["cache_shape"] as? [Int], functions: functions(link))
                }
                if chain.last?.output != ModelNames.outputLogits {
                    throw AutoGLMError("\(path): the last decoder package (\(chain.last?.file ?? "")) returns no logits")
                }
            }
        }
        packages = pkgs
        decoderChain = chain
        prefillChunk = chunk
        kvCache = cache
    }

    public var hasAudio: Bool { audio != nil }

    public func url(_ name: String) -> URL { root.appendingPathComponent(name) }

    /// Every listed file exists with its exported size (hashing a multi-GB bundle on a phone is slow).
    public func checkFiles() throws {
        for (name, bytes) in files {
            let path = url(name).path
            guard let attrs = try? FileManager.default.attributesOfItem(atPath: path),
                  let size = attrs[.size] as? Int else {
                throw AutoGLMError("\(path): missing (listed in manifest.json); copy the whole bundle folder")
            }
            if size != bytes {
                throw AutoGLMError("\(path): \(size) bytes but manifest.json says \(bytes)")
            }
        }
    }
}
