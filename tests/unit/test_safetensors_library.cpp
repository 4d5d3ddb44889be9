// qvl's safetensors header rule against the reference: the pinned safetensors library. Every seed of the
// fuzz corpus (tests/fuzz/corpus/: valid files, and broken ones including the two polyglots, a gap between
// tensors and bytes after the last one) is refused by qvl's parser exactly when the library refuses it.
// The one allowed difference: a dtype the library knows and qvl does not read (C64) is refused by qvl only.
// SKIPPED without the pinned Python environment.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "converter/safetensors_header.h"
#include "tests/support/test_support.h"

#ifndef QVL_PYTHON
#define QVL_PYTHON ""
#endif

namespace qvl::testing {
namespace {
namespace fs = std::filesystem;

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// file name -> "" when safe_open (torch framework) reads every tensor, else the library's message.
std::map<std::string, std::string> library_verdicts(const std::string& python, const std::string& dir,
                                                    const TempDir& tmp) {
  write_file(tmp.file("verdicts.py"),
             "import os, sys\n"
             "from safetensors import safe_open\n"
             "d = sys.argv[1]\n"
             "for n in sorted(os.listdir(d)):\n"
             "    try:\n"
             "        with safe_open(os.path.join(d, n), 'pt') as f:\n"
             "            for k in f.keys():\n"
             "                f.get_tensor(k)\n"
             "        print(n + '\\tok')\n"
             "    except Exception as e:\n"
             "        print(n + '\\t' + ' '.join(str(e).split()))\n");
  const std::string cmd = python + " " + tmp.file("verdicts.py") + " " + dir + " 2>&1";
  std::FILE* p = popen(cmd.c_str(), "r");
  if (!p) return {};
  std::string out;
  char buf[4096];
  while (size_t n = std::fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  pclose(p);
  std::map<std::string, std::string> verdicts;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    const size_t tab = line.find('\t');
    if (tab == std::string::npos) continue;
    const std::string msg = line.substr(tab + 1);
    verdicts[line.substr(0, tab)] = msg == "ok" ? "" : msg;
  }
  return verdicts;
}

TEST(SafetensorsLibrary, CorpusVerdictsAgreeWithTheReferenceLibrary) {
  const std::string python = QVL_PYTHON;
  if (python.empty() || !fs::exists(python))
    GTEST_SKIP() << "no pinned Python environment (configure with -DQVL_PYTHON=..., see scripts/setup.sh)";
  const std::string dir = data_path("tests/fuzz/corpus");
  TempDir tmp;
  const auto verdicts = library_verdicts(python, dir, tmp);
  size_t files = 0, refused = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    ++files;
    auto it = verdicts.find(name);
    ASSERT_NE(it, verdicts.end()) << "the library gave no verdict on " << name;
    const std::string bytes = read_all(e.path().string());
    std::string ours;
    try {
      parse_safetensors_header(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), name);
    } catch (const std::runtime_error& err) {
      ours = err.what();
    }
    refused += !ours.empty();
    if (it->second.empty() && ours.find("unknown dtype") != std::string::npos) continue;  // a dtype qvl skips
    EXPECT_EQ(ours.empty(), it->second.empty())
        << name << ": qvl " << (ours.empty() ? "accepts" : "refuses (" + ours + ")") << ", the library "
        << (it->second.empty() ? "accepts" : "refuses (" + it->second + ")");
    // The seeds are named for what they are.
    EXPECT_EQ(name.rfind("bad_", 0) == 0, !ours.empty()) << name << ": " << ours;
  }
  EXPECT_EQ(files, verdicts.size());
  EXPECT_GE(refused, 20u) << "the corpus lost its broken seeds";
  for (const char* polyglot : {"bad_gap.safetensors", "bad_trailing.safetensors"})
    EXPECT_TRUE(verdicts.count(polyglot) && !verdicts.at(polyglot).empty()) << polyglot;
}

}  // namespace
}  // namespace qvl::testing
