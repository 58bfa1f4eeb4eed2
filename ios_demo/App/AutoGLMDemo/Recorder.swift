import AVFoundation
import Foundation

/// Records 16 kHz mono 16-bit PCM WAV (the audio tower's rate) to a temporary file.
@MainActor
final class Recorder: ObservableObject {
    @Published var isRecording = false
    @Published var error = ""
    private var recorder: AVAudioRecorder?
    private let url = FileManager.default.temporaryDirectory.appendingPathComponent("recording.wav")

    func start() {
        AVAudioApplication.requestRecordPermission { granted in
            Task { @MainActor in
                guard granted else { self.error = "\nmicrophone permission denied"; return }
                do {
                    let session = AVAudioSession.sharedInstance()
                    try session.setCategory(.playAndRecord, mode: .default)
                    try session.setActive(true)
                    let settings: [String: Any] = [
                        AVFormatIDKey: kAudioFormatLinearPCM, AVSampleRateKey: 16_000, AVNumberOfChannelsKey: 1,
                        AVLinearPCMBitDepthKey: 16, AVLinearPCMIsFloatKey: false, AVLinearPCMIsBigEndianKey: false,
                    ]
                    let r = try AVAudioRecorder(url: self.url, settings: settings)
                    r.record()
                    self.recorder = r
                    self.isRecording = true
                    self.error = ""
                } catch {
                    self.error = "\ncannot record: \(error.localizedDescription)"
                }
            }
        }
    }

    func stop() -> URL? {
        recorder?.stop()
        recorder = nil
        isRecording = false
        return FileManager.default.fileExists(atPath: url.path) ? url : nil
    }
}
