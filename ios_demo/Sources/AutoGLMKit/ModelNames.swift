/// Every name AutoGLMKit uses to talk to the Core ML packages, in one place. `make demo-test`
/// checks each one against the manifest.json of freshly exported iOS 18 and iOS 17 bundles
/// (component, function, input, output and state names of `coreml.packages`).
public enum ModelNames {
    public static let componentVisionEncoder = "vision_encoder"
    public static let componentAudioEncoder = "audio_encoder"
    public static let componentTokenEmbedding = "token_embedding"
    public static let componentTextDecoder = "text_decoder"

    public static let functionMain = "main"
    public static let functionPrefill = "prefill"  // iOS 18 multifunction decoder
    public static let functionDecode = "decode"
    /// The functions the engine calls. A vision package with image buckets has a function per bucket;
    /// the engine runs `main` only, so the others are never loaded (each MLModel would be one more
    /// compiled copy of the tower in memory).
    public static let functionsCalled: Set<String> = [functionMain, functionPrefill, functionDecode]

    public static let inputPixelValues = "pixel_values"
    public static let inputInputFeatures = "input_features"
    public static let inputTokenIds = "token_ids"
    public static let inputInputsEmbeds = "inputs_embeds"
    public static let inputPositionIds = "position_ids"
    public static let inputCausalMask = "causal_mask"
    public static let inputKeyCache = "key_cache"  // iOS 17: the cache travels as inputs...
    public static let inputValueCache = "value_cache"

    public static let outputImageEmbeds = "image_embeds"
    public static let outputAudioEmbeds = "audio_embeds"
    public static let outputEmbeds = "embeds"
    public static let outputLogits = "logits"
    public static let outputKeyUpdate = "key_update"  // ...and its new rows come back as outputs
    public static let outputValueUpdate = "value_update"

    public static let stateKeyCache = "keyCache"  // iOS 18: Core ML state, never named in calls
    public static let stateValueCache = "valueCache"
}
