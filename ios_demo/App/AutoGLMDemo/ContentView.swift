import PhotosUI
import SwiftUI
import UIKit

/// One screen: a screenshot (photo library or camera), an optional recording and a task; the
/// answer streams in with load time, prefill / decode speed and memory below.
struct ContentView: View {
    @ObservedObject var model: DemoModel
    @State private var prompt = ""
    @State private var photo: PhotosPickerItem?
    @State private var showCamera = false
    @StateObject private var recorder = Recorder()

    var body: some View {
        VStack(alignment: .leading, spacing: 8) {
            Text(model.status).font(.caption).textSelection(.enabled)
            HStack(alignment: .top) {
                if let cg = model.preview {
                    Image(decorative: cg, scale: 1).resizable().scaledToFit().frame(width: 64, height: 112)
                }
                VStack(alignment: .leading) {
                    HStack {
                        PhotosPicker("Screenshot…", selection: $photo, matching: .images)
                        Button("Camera") { showCamera = true }
                            .disabled(!UIImagePickerController.isSourceTypeAvailable(.camera))
                    }
                    HStack {
                        Button(recorder.isRecording ? "Stop" : "Record") {
                            if recorder.isRecording {
                                if let url = recorder.stop() { model.setRecording(url) }
                            } else {
                                recorder.start()
                            }
                        }
                        Button("Clear media") { model.clearMedia() }
                    }
                    Text(model.media + recorder.error).font(.caption)
                }
            }
            ScrollView {
                Text(model.answer).frame(maxWidth: .infinity, alignment: .leading).textSelection(.enabled)
            }
            Text(model.stats).font(.caption)
            HStack {
                TextField("Task, e.g. 打开微信给张三发消息", text: $prompt, axis: .vertical)
                    .textFieldStyle(.roundedBorder)
                Button("Send") { model.send(prompt) }.disabled(!model.ready || model.busy)
            }
        }
        .padding()
        .onChange(of: photo) { _, item in
            Task {
                if let data = try? await item?.loadTransferable(type: Data.self) { model.setImage(data: data) }
            }
        }
        .sheet(isPresented: $showCamera) {
            CameraPicker { image in
                if let cg = image.cgImage { model.setImage(cg) }
            }
        }
    }
}
