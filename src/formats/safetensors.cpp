#include "formats/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "util/error.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace lizard {

namespace {

// safetensors dtype names lizard reads, and their element sizes.
bool st_dtype(const std::string& s, DType& t) {
  if (s == "F32") return t = DType::F32, true;
  if (s == "F16") return t = DType::F16, true;
  if (s == "BF16") return t = DType::BF16, true;
  return false;
}

const char* st_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    default: return nullptr;
  }
}

// Parses JSON without exceptions: a discarded value on error.
json parse_json(const char* b, const char* e) { return json::parse(b, e, nullptr, /*allow_exceptions=*/false); }

}  // namespace

SafeTensorsFile::SafeTensorsFile(const std::string& path) : file_(path) {
  const uint8_t* base = file_.data();
  const size_t size = file_.size();
  auto err = [&](const std::string& m) { throw Error(fmt::format("{}: {}", file_.path(), m)); };

  if (size < 8) err(fmt::format("not a safetensors file ({} bytes, too short for the header length)", size));
  uint64_t hlen;
  std::memcpy(&hlen, base, 8);
  if (hlen > size - 8)
    err(fmt::format("not a safetensors file or truncated: header length {} exceeds the file size {}", hlen, size));
  const char* hb = reinterpret_cast<const char*>(base + 8);
  // Top-level keys are tensor names; the callback catches repeats that the parser would overwrite.
  std::set<std::string> keys;
  std::string dup;
  json h = json::parse(
      hb, hb + hlen,
      [&](int depth, json::parse_event_t ev, json& parsed) {
        if (ev == json::parse_event_t::key && depth == 1 && dup.empty() && !keys.insert(parsed.get<std::string>()).second)
          dup = parsed.get<std::string>();
        return true;
      },
      /*allow_exceptions=*/false);
  if (h.is_discarded()) err("the safetensors header is not valid JSON");
  if (!dup.empty()) err(fmt::format("the safetensors header names '{}' twice", dup));
  if (!h.is_object()) err("the safetensors header is not a JSON object");
  const size_t data_start = 8 + static_cast<size_t>(hlen);
  const size_t data_size = size - data_start;

  struct Range {
    size_t begin, end;
    std::string name;
  };
  std::vector<Range> ranges;
  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) err("__metadata__ is not a JSON object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) err(fmt::format("__metadata__ value of '{}' is not a string", m.key()));
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!v.is_object()) err(fmt::format("tensor '{}': entry is not a JSON object", name));
    auto dt = v.find("dtype");
    auto sh = v.find("shape");
    auto off = v.find("data_offsets");
    if (dt == v.end() || !dt->is_string()) err(fmt::format("tensor '{}' has no dtype string", name));
    if (sh == v.end() || !sh->is_array()) err(fmt::format("tensor '{}' has no shape array", name));
    if (off == v.end() || !off->is_array() || off->size() != 2)
      err(fmt::format("tensor '{}' has no data_offsets [begin, end]", name));
    TensorView t;
    t.name = name;
    const std::string dname = dt->get<std::string>();
    if (!st_dtype(dname, t.type))
      err(fmt::format("tensor '{}' has dtype {}, lizard reads F32, F16, BF16", name, dname));
    const uint64_t esize = dtype_info(t.type).block_bytes;
    uint64_t numel = 1;
    for (const json& d : *sh) {
      if (!d.is_number_unsigned()) err(fmt::format("tensor '{}' has a shape entry that is not a non-negative integer", name));
      uint64_t x = d.get<uint64_t>();
      if (x > uint64_t(std::numeric_limits<int64_t>::max()) || (x != 0 && numel > (uint64_t(INT64_MAX) / esize) / x))
        err(fmt::format("tensor '{}' has an impossibly large shape", name));
      numel *= x;
      t.shape.push_back(static_cast<int64_t>(x));
    }
    const json& b = (*off)[0];
    const json& e = (*off)[1];
    if (!b.is_number_unsigned() || !e.is_number_unsigned())
      err(fmt::format("tensor '{}' has data_offsets that are not non-negative integers", name));
    const uint64_t ob = b.get<uint64_t>(), oe = e.get<uint64_t>();
    if (ob > oe || oe > data_size)
      err(fmt::format("tensor '{}' has data_offsets [{}, {}] outside the data section of {} bytes", name, ob, oe,
                      data_size));
    if (oe - ob != numel * esize)
      err(fmt::format("tensor '{}' ({} {}) needs {} bytes but data_offsets [{}, {}] span {}", name, dname,
                      t.shape_str(), numel * esize, ob, oe, oe - ob));
    t.data = base + data_start + ob;
    t.nbytes = static_cast<size_t>(oe - ob);
    ranges.push_back({size_t(ob), size_t(oe), name});
    index_[name] = tensors_.size();
    tensors_.push_back(std::move(t));
  }
  // Tensors must not share bytes (the format forbids it; a corrupt header may do it).
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].begin < ranges[i - 1].end && ranges[i].begin != ranges[i].end)
      err(fmt::format("tensors '{}' and '{}' overlap", ranges[i - 1].name, ranges[i].name));
  // The format does not promise aligned data; kernels assume element alignment, so copy the rare
  // misaligned tensor once.
  for (auto& t : tensors_) {
    const size_t es = dtype_info(t.type).block_bytes;
    if (t.nbytes && reinterpret_cast<uintptr_t>(t.data) % es != 0) {
      auto buf = std::make_unique<uint8_t[]>(t.nbytes);
      std::memcpy(buf.get(), t.data, t.nbytes);
      t.data = buf.get();
      copies_.push_back(std::move(buf));
    }
  }
}

const TensorView* SafeTensorsFile::find_tensor(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

SafeTensorsSet::SafeTensorsSet(const std::string& dir) {
  std::error_code ec;
  auto add = [&](const std::string& file) {
    files_.push_back(std::make_unique<SafeTensorsFile>(file));
    for (const TensorView& t : files_.back()->tensors()) {
      auto [it, fresh] = index_.emplace(t.name, &t);
      if (!fresh)
        fail("tensor '{}' appears in both '{}' and another file of '{}'", t.name, file, dir);
    }
  };
  if (fs::is_regular_file(dir, ec)) {
    add(dir);
    return;
  }
  if (!fs::is_directory(dir, ec)) fail("'{}' is not a directory of safetensors files", dir);
  const fs::path d(dir);
  if (fs::exists(d / "model.safetensors", ec)) {
    add((d / "model.safetensors").string());
    return;
  }
  const fs::path idx = d / "model.safetensors.index.json";
  if (fs::exists(idx, ec)) {
    std::ifstream in(idx, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    if (!in) fail("cannot read '{}'", idx.string());
    const std::string text = ss.str();
    json j = parse_json(text.data(), text.data() + text.size());
    if (j.is_discarded() || !j.is_object()) fail("'{}' is not valid JSON", idx.string());
    auto wm = j.find("weight_map");
    if (wm == j.end() || !wm->is_object()) fail("'{}' has no weight_map object", idx.string());
    std::vector<std::string> shards;  // in order of first mention, each once
    std::set<std::string> seen;
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      if (!it.value().is_string()) fail("'{}': weight_map['{}'] is not a file name", idx.string(), it.key());
      std::string f = it.value().get<std::string>();
      if (f.empty() || f.find('/') != std::string::npos || f == "." || f == "..")
        fail("'{}': weight_map['{}'] = '{}' is not a plain file name", idx.string(), it.key(), f);
      if (seen.insert(f).second) shards.push_back(f);
    }
    std::sort(shards.begin(), shards.end());
    std::map<std::string, const SafeTensorsFile*> by_name;
    for (const auto& f : shards) {
      add((d / f).string());
      by_name[f] = files_.back().get();
    }
    for (auto it = wm->begin(); it != wm->end(); ++it)
      if (!by_name[it.value().get<std::string>()]->find_tensor(it.key()))
        fail("'{}' says tensor '{}' is in '{}', but it is not there", idx.string(), it.key(),
             it.value().get<std::string>());
    return;
  }
  std::vector<std::string> all;
  for (const auto& e : fs::directory_iterator(d, ec))
    if (e.path().extension() == ".safetensors" && e.is_regular_file(ec)) all.push_back(e.path().string());
  if (ec) fail("cannot list '{}': {}", dir, ec.message());
  if (all.empty()) fail("no .safetensors files in '{}'", dir);
  std::sort(all.begin(), all.end());
  for (const auto& f : all) add(f);
}

const TensorView* SafeTensorsSet::find_tensor(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

std::vector<const TensorView*> SafeTensorsSet::tensors() const {
  std::vector<const TensorView*> v;
  v.reserve(index_.size());
  for (const auto& [n, t] : index_) v.push_back(t);
  return v;
}

namespace {

void write_all(int fd, const void* p, size_t n, const std::string& path) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    ssize_t k = ::write(fd, c, n);
    if (k < 0) {
      if (errno == EINTR) continue;
      fail("cannot write '{}': {}", path, std::strerror(errno));
    }
    c += k;
    n -= static_cast<size_t>(k);
  }
}

}  // namespace

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  json h = json::object();
  if (!metadata.empty()) {
    json m = json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    h["__metadata__"] = m;
  }
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    const char* dn = st_name(t.type);
    LZ_CHECK(dn, "cannot write tensor '{}' of type {} to safetensors (F32, F16, BF16 only)", t.name,
             dtype_name(t.type));
    LZ_CHECK(!t.name.empty() && t.name != "__metadata__", "invalid tensor name '{}'", t.name);
    LZ_CHECK(!h.contains(t.name), "tensor '{}' given twice", t.name);
    uint64_t numel = 1;
    for (int64_t d : t.shape) {
      LZ_CHECK(d >= 0, "tensor '{}' has a negative dimension", t.name);
      numel *= static_cast<uint64_t>(d);
    }
    const uint64_t need = numel * dtype_info(t.type).block_bytes;
    LZ_CHECK(need == t.nbytes, "tensor '{}' ({}, {} elements) needs {} bytes, {} given", t.name, dn, numel, need,
             t.nbytes);
    LZ_CHECK(t.data || t.nbytes == 0, "tensor '{}' has no data", t.name);
    h[t.name] = {{"dtype", dn}, {"shape", t.shape}, {"data_offsets", {offset, offset + need}}};
    offset += need;
  }
  std::string header = h.dump();
  // Pad with spaces so the data section starts 8-byte aligned, as the reference writer does.
  header.append((8 - (8 + header.size()) % 8) % 8, ' ');
  const uint64_t hlen = header.size();

  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail("cannot create '{}': {}", tmp, std::strerror(errno));
  try {
    write_all(fd, &hlen, 8, tmp);
    write_all(fd, header.data(), header.size(), tmp);
    for (const auto& t : tensors) write_all(fd, t.data, t.nbytes, tmp);
    if (::fsync(fd) != 0) fail("cannot sync '{}': {}", tmp, std::strerror(errno));
    if (::close(fd) != 0) {
      fd = -1;
      fail("cannot close '{}': {}", tmp, std::strerror(errno));
    }
    fd = -1;
    if (::rename(tmp.c_str(), path.c_str()) != 0) fail("cannot rename '{}' to '{}': {}", tmp, path, std::strerror(errno));
  } catch (...) {
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  // Make the rename itself durable.
  std::string dir = fs::path(path).parent_path().string();
  int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace lizard
