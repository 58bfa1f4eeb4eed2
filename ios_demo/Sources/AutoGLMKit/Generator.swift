import Foundation

/// One user turn: text, an optional screenshot (RGB bytes), an optional recording (mono PCM).
public struct Request {
    public var prompt = ""
    public var system: String?
    public var image: (rgb: [UInt8], width: Int, height: Int)?
    public var audio: (mono: [Float], sampleRate: Int)?
    public var maxNewTokens = 64
    public var sampling = SamplingConfig()
    /// nil: the template's default; false: pre-fill an empty think block.
    public var enableThinking: Bool?

    public init(prompt: String) { self.prompt = prompt }

    /// [system], then one user message: image, audio, text (runtime Session.messages_for).
    func messages() throws -> [Message] {
        var out: [Message] = []
        if let s = system, !s.isEmpty { out.append(try Message(role: "system", parts: [.text(s)])) }
        var parts: [Message.Part] = []
        if image != nil { parts.append(.image) }
        if audio != nil { parts.append(.audio) }
        parts.append(.text(prompt))
        out.append(try Message(role: "user", parts: parts))
        return out
    }
}

public struct GenerationResult {
    public let text: String
    public let tokenIds: [Int]
    public let promptTokens: Int
    public let stopReason: String  // "eos" or "max_new_tokens"
    public let preprocessSeconds: Double
    public let prefillSeconds: Double
    public let decodeSeconds: Double

    public var decodeTokensPerSecond: Double {
        decodeSeconds > 0 ? Double(max(tokenIds.count - 1, 1)) / decodeSeconds : 0
    }
    public var prefillTokensPerSecond: Double { prefillSeconds > 0 ? Double(promptTokens) / prefillSeconds : 0 }
}

/// Prompt to streamed answer (runtime session.py Session): embeddings with image and audio
/// features spliced in, prefill in chunks of max_seq_len after a cache reset, then one token at a
/// time at positions cache + rope_delta, until an EOS id or max_new_tokens.
public final class Generator {
    let manifest: BundleManifest
    let engine: Engine
    let prompts: PromptEncoder
    let vocab: Vocabulary
    let images: ImagePreprocessor
    let audios: AudioPreprocessor?

    /// The last request's prompt and tensors, for the app's details and the tests.
    public private(set) var lastPrompt: PromptInputs?
    public private(set) var lastPixelValues: [Float]?
    public private(set) var lastInputFeatures: [Float]?

    public init(manifest: BundleManifest, engine: Engine, tokenizer: TextTokenizer, vocab: Vocabulary) {
        self.manifest = manifest
        self.engine = engine
        self.prompts = PromptEncoder(manifest: manifest, tokenizer: tokenizer)
        self.vocab = vocab
        self.images = ImagePreprocessor(spec: manifest.image)
        self.audios = manifest.audio.map { AudioPreprocessor(spec: $0) }
    }

    public func generate(_ req: Request, onText: (String) -> Void = { _ in }, onToken: (Int) -> Void = { _ in }) throws -> GenerationResult {
        guard req.maxNewTokens >= 1 else { throw AutoGLMError("max new tokens must be >= 1, got \(req.maxNewTokens)") }
        let t0 = Date()
        let input = try prompts.encode(try req.messages(), enableThinking: req.enableThinking)
        let n = input.inputIds.count
        guard n + req.maxNewTokens <= manifest.maxContext else {
            throw AutoGLMError("prompt of \(n) tokens + \(req.maxNewTokens) new tokens exceeds the context of \(manifest.maxContext) tokens")
        }
        lastPrompt = input
        let embeds = try embed(input, req)
        let t1 = Date()
        var logits = try prefill(embeds, input)
        let t2 = Date()

        var sampler = try Sampler(req.sampling)
        var stream = StreamDecoder(vocab: vocab, skipSpecialTokens: true)
        var tokens: [Int] = []
        var text = ""
        var stop = "max_new_tokens"
        let v = manifest.vocabSize
        for i in 0..<req.maxNewTokens {
            let token = sampler.sample(logits[(logits.count - v)...])
            tokens.append(token)
            onToken(token)
            if manifest.eosTokenIds.contains(token) {
                stop = "eos"
                break
            }
            let delta = try stream.push(token)
            if !delta.isEmpty {
                text += delta
                onText(delta)
            }
            if i + 1 < req.maxNewTokens {
                let e = try engine.tokenEmbedding([token])
                let pos = Positions.decode(cachePosition: n + i, ropeDelta: input.ropeDelta)
                logits = try engine.textDecoder(e, start: n + i, positionIds: pos)
            }
        }
        let tail = stream.finish()
        if !tail.isEmpty {
            text += tail
            onText(tail)
        }
        let t3 = Date()
        return GenerationResult(text: text, tokenIds: tokens, promptTokens: n, stopReason: stop,
                                preprocessSeconds: t1.timeIntervalSince(t0), prefillSeconds: t2.timeIntervalSince(t1),
                                decodeSeconds: t3.timeIntervalSince(t2))
    }

    private func embed(_ input: PromptInputs, _ req: Request) throws -> [Float] {
        var embeds = try engine.tokenEmbedding(input.inputIds)
        lastPixelValues = nil
        lastInputFeatures = nil
        if let img = req.image {
            let px = try images.preprocess(rgb: img.rgb, width: img.width, height: img.height)
            lastPixelValues = px
            try splice(&embeds, input.inputIds, manifest.imageTokenId, try engine.visionEncoder(px), "image")
        }
        if let a = req.audio {
            guard let audios = audios, let audioId = manifest.audioTokenId else {
                throw AutoGLMError("this model has no audio tower; remove the recording")
            }
            let feats = try audios.preprocess(mono: a.mono, sampleRate: a.sampleRate)
            lastInputFeatures = feats
            try splice(&embeds, input.inputIds, audioId, try engine.audioEncoder(feats), "audio")
        }
        return embeds
    }

    /// Writes feature rows, in order, over the embedding rows of every placeholder id.
    private func splice(_ embeds: inout [Float], _ ids: [Int], _ placeholder: Int, _ features: [Float], _ what: String) throws {
        let h = manifest.hiddenSize
        let rows = ids.indices.filter { ids[$0] == placeholder }
        guard rows.count * h == features.count else {
            throw AutoGLMError("the \(what) encoder returned \(features.count / h) rows for \(rows.count) placeholders")
        }
        for (r, i) in rows.enumerated() {
            embeds.replaceSubrange((i * h)..<((i + 1) * h), with: features[(r * h)..<((r + 1) * h)])
        }
    }

    private func prefill(_ embeds: [Float], _ input: PromptInputs) throws -> [Float] {
        engine.reset()
        let n = input.inputIds.count, h = manifest.hiddenSize, chunk = manifest.maxSeqLen
        var last: [Float] = []
        for start in stride(from: 0, to: n, by: chunk) {
            let end = min(start + chunk, n)
            let pos = (0..<3).map { Array(input.positionIds[$0][start..<end]) }
            last = try engine.textDecoder(Array(embeds[(start * h)..<(end * h)]), start: start, positionIds: pos)
        }
        return last
    }
}
