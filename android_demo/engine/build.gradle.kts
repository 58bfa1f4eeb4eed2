// Plain Java: no Android classes, so it is compiled and unit-tested on any JVM
// (`make demo-test` does it with javac + JUnit 4, without Gradle).
plugins {
    `java-library`
}

java {
    sourceCompatibility = JavaVersion.VERSION_11
    targetCompatibility = JavaVersion.VERSION_11
}

dependencies {
    implementation("com.google.code.gson:gson:2.10.1")
    testImplementation("junit:junit:4.13.2")
}

tasks.withType<JavaCompile>().configureEach {
    options.encoding = "UTF-8"
}

// The replay tests need a bundle and its golden traces: `make demo-test` writes them to build/demo.
tasks.test {
    systemProperty("autoglm.bundle", rootProject.file("../build/demo/android").absolutePath)
    systemProperty("autoglm.traces", rootProject.file("../build/demo/traces/android").absolutePath)
}
